from django.apps import AppConfig


class TradingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "trading"

    def ready(self) -> None:
        # The live feed publishes every committed transaction's market events (docs/realtime.md).
        from markets.services import EVENT_SUBSCRIBERS
        from trading.realtime import publish_committed_events

        if publish_committed_events not in EVENT_SUBSCRIBERS:
            EVENT_SUBSCRIBERS.append(publish_committed_events)
