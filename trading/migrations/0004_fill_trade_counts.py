from django.db import migrations
from django.db.models import Count


def fill_trade_counts(apps, schema_editor):
    """Each market's trade_count from its trades (the services keep it from here on)."""
    Market = apps.get_model("markets", "Market")
    Trade = apps.get_model("trading", "Trade")
    for row in Trade.objects.values("market_id").annotate(n=Count("id")):
        Market.objects.filter(id=row["market_id"]).update(trade_count=row["n"])


class Migration(migrations.Migration):
    dependencies = [
        ("markets", "0003_market_trade_count"),
        ("trading", "0003_book_levels"),
    ]

    operations = [migrations.RunPython(fill_trade_counts, migrations.RunPython.noop)]
