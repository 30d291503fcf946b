from django.apps import AppConfig


class TradingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "trading"

    def ready(self) -> None:
        # The live feed publishes every committed transaction's market events and private feed messages
        # (docs/realtime.md).
        from agents.services import AGENT_FEED_SUBSCRIBERS, KEY_REVOKED_SUBSCRIBERS
        from markets.services import EVENT_SUBSCRIBERS
        from trading.realtime import publish_agent_messages, publish_committed_events, publish_key_revoked

        if publish_committed_events not in EVENT_SUBSCRIBERS:
            EVENT_SUBSCRIBERS.append(publish_committed_events)
        if publish_agent_messages not in AGENT_FEED_SUBSCRIBERS:
            AGENT_FEED_SUBSCRIBERS.append(publish_agent_messages)
        # A revoked key closes the private feeds opened with it at once.
        if publish_key_revoked not in KEY_REVOKED_SUBSCRIBERS:
            KEY_REVOKED_SUBSCRIBERS.append(publish_key_revoked)
