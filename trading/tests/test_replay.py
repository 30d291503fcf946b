"""``manage.py replay_trades`` and ``trading.replay``: real Polymarket executions replayed through the services."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from agents.models import Agent, LedgerEntry
from agents.services import NAME_RE
from markets.models import Market
from trading import replay
from trading.lifecycle import market_close
from trading.models import Order, Position, Trade
from trading.suspension import agent_suspend

FED = "Will the Fed cut rates in March?"
HIKE = "Will the Fed hike rates in March?"
HEADER = [
    "user_id",
    "trade_direction",
    "shares",
    "option_yes_no",
    "option_type",
    "price",
    "total_trade_amount",
    "timestamp",
]
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
START = datetime(2026, 2, 26, 9, 0, 0)


def stamp(minute: int) -> str:
    return (START + timedelta(minutes=minute)).strftime("%A, %B %d, %Y %H:%M:%S EST")


def trade(user: str, direction: str, shares, option: str, price, minute: int, question: str = FED) -> list[str]:
    return [user, direction, str(shares), option, question, str(price), "0", stamp(minute)]


def write_csv(tmp_path: Path, rows: list[list[str]], name: str = "trades.csv") -> str:
    """Write rows newest first, as the real file is."""
    path = tmp_path / name
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(reversed(rows))
    return str(path)


def run(*args, **options) -> str:
    out = io.StringIO()
    call_command("replay_trades", *args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def local_replay(path: str, **options) -> replay.ReplayReport:
    rows, malformed = replay.read_trades(path)
    ids, _ = replay.ensure_markets_local(rows, scale=options.get("scale", replay.DEFAULT_SCALE))
    report = replay.replay(rows, replay.LocalExchange(), market_ids=ids, **options)
    report.malformed = malformed
    return report


def agent(user_id: str) -> Agent:
    return Agent.objects.get(name=f"pm-{user_id}")


def position(user_id: str, question: str = FED) -> Position:
    return Position.objects.get(agent=agent(user_id), market__question=question)


def test_it_replays_each_execution_oldest_first_at_the_price_rounded_to_the_tick(db, tmp_path, audit_clean):
    path = write_csv(
        tmp_path,
        [
            trade("alice", "BUY", 100, "Yes", "0.456", 0),
            trade("bob", "BUY", 50, "No", "0.304", 1),
            trade("carol", "BUY", 20, "Yes", "0.625", 2),
        ],
    )
    report = local_replay(path)
    trades = list(Trade.objects.order_by("market", "seq").values_list("price", "size", "taker_agent__name"))
    assert trades == [
        (Decimal("0.46"), 10, "pm-alice"),
        (Decimal("0.70"), 5, "pm-bob"),  # NO at 0.30 is a YES price of 0.70
        (Decimal("0.62"), 2, "pm-carol"),  # 0.625 rounds half to even
    ]
    assert position("alice").yes_shares == 10
    assert position("bob").no_shares == 5
    assert report.replayed == 3
    assert Market.objects.get(question=FED).last_price == Decimal("0.62")
    assert not Order.objects.filter(status__in=Order.RESTING).exists()
    audit_clean()


def test_it_creates_one_agent_per_trader_and_one_attributed_market_per_question(db, tmp_path):
    wallet = "0xA3af760e15e6B6bd3C43d8cf2AE6952F0a9bB7a6-1720875307802"
    path = write_csv(
        tmp_path,
        [
            trade("alice", "BUY", 10, "Yes", "0.5", 0),
            trade("alice", "BUY", 10, "Yes", "0.5", 1, question=HIKE),
            trade(wallet, "BUY", 10, "No", "0.9", 2, question=HIKE),
        ],
    )
    local_replay(path)
    names = set(Agent.objects.values_list("name", flat=True))
    assert "pm-alice" in names
    assert "pm-liquidity" in names
    long_name = next(n for n in names if n.startswith("pm-0xA3af"))
    assert len(long_name) <= 40
    assert NAME_RE.match(long_name)
    assert Agent.objects.count() == 3
    market = Market.objects.get(question=HIKE)
    assert market.source == "polymarket"
    assert market.creator is None
    assert market.is_historical
    assert market.status == Market.Status.OPEN
    assert market.deadline > timezone.now() + timedelta(days=29)
    assert "ylcoder/random-walk" in market.attribution
    assert "Apache-2.0" in market.attribution
    assert market.reference_price == Decimal("0.1000")  # the last real price, as YES: 1 - 0.9
    assert not LedgerEntry.objects.filter(kind="fee").exists()


def test_it_clamps_prices_to_the_tradable_range(db, tmp_path):
    path = write_csv(
        tmp_path, [trade("alice", "BUY", 10, "No", "0.996", 0), trade("bob", "BUY", 10, "Yes", "0.003", 1)]
    )
    report = local_replay(path)
    assert list(Trade.objects.order_by("seq").values_list("price", flat=True)) == [Decimal("0.01"), Decimal("0.01")]
    assert report.clamped == 2


def test_a_sell_of_contracts_the_trader_holds_transfers_them(db, tmp_path, audit_clean):
    path = write_csv(
        tmp_path, [trade("alice", "BUY", 100, "Yes", "0.40", 0), trade("alice", "SELL", 60, "Yes", "0.55", 1)]
    )
    report = local_replay(path)
    sale = Trade.objects.order_by("seq").last()
    assert (sale.kind, sale.price, sale.size) == ("transfer_yes", Decimal("0.55"), 6)
    assert position("alice").yes_shares == 4
    assert report.converted == 0
    audit_clean()


def test_a_sell_of_contracts_not_held_becomes_a_buy_of_the_other_side(db, tmp_path, audit_clean):
    path = write_csv(tmp_path, [trade("alice", "SELL", 100, "Yes", "0.35", 0)])
    report = local_replay(path)
    only = Trade.objects.get()
    assert (only.price, only.size) == (Decimal("0.35"), 10)  # SELL YES at 0.35 = BUY NO at 0.65
    assert position("alice").no_shares == 10
    assert agent("alice").balance == Decimal("993.50")
    assert report.converted == 1
    audit_clean()


def test_it_trims_buys_to_what_the_trader_can_afford_and_skips_what_it_cannot(db, tmp_path, audit_clean):
    path = write_csv(
        tmp_path,
        [trade("whale", "BUY", 50_000, "Yes", "0.50", 0), trade("whale", "BUY", 10, "Yes", "0.50", 1)],
    )
    report = local_replay(path)
    assert position("whale").yes_shares == 2000  # 1000.00 credits at 0.50
    assert report.trimmed == 1
    assert len(report.unaffordable) == 1
    assert "cannot afford" in report.unaffordable[0]
    audit_clean()


def test_the_liquidity_agent_is_funded_by_ledgered_operator_adjustments(db, tmp_path, audit_clean):
    rows = [trade(f"t{i}", "BUY", 10_000, "Yes", "0.10", i) for i in range(3)]  # 3 x 1000 contracts, 900 NO each
    local_replay(write_csv(tmp_path, rows))
    liquidity = Agent.objects.get(name="pm-liquidity")
    assert LedgerEntry.objects.filter(agent=liquidity, kind="adjustment").exists()
    assert Position.objects.get(agent=liquidity).no_shares == 3000
    audit_clean()


def test_it_reports_and_skips_malformed_rows(db, tmp_path):
    path = write_csv(
        tmp_path,
        [
            trade("alice", "BUY", 10, "Yes", "0.5", 0),
            trade("bob", "HOLD", 10, "Yes", "0.5", 1),
            trade("carol", "BUY", 10, "Maybe", "0.5", 2),
            trade("dave", "BUY", "many", "Yes", "0.5", 3),
            trade("erin", "BUY", 10, "Yes", "1.5", 4),
            trade("", "BUY", 10, "Yes", "0.5", 5),
            trade("frank", "BUY", 10, "Yes", "0.5", 6, question=" "),
            ["gina", "BUY", "10", "Yes", FED, "0.5", "0", "yesterday at noon"],
        ],
    )
    report = local_replay(path)
    assert report.replayed == 1
    assert len(report.malformed) == 7
    text = "\n".join(report.malformed)
    for reason in ("BUY or SELL", "Yes or No", "shares", "price", "no user_id", "no question", "timestamp"):
        assert reason in text
    assert Agent.objects.count() == 2  # alice and the liquidity agent


def test_rerunning_the_replay_skips_rows_already_replayed(db, tmp_path):
    path = write_csv(tmp_path, [trade("alice", "BUY", 10, "Yes", "0.5", 0), trade("alice", "BUY", 10, "Yes", "0.5", 0)])
    first = local_replay(path)
    second = local_replay(path)
    assert first.replayed == 2  # two identical executions are two executions
    assert (second.replayed, second.already) == (0, 2)
    assert Trade.objects.count() == 2


def test_a_row_that_fails_leaves_nothing_behind(db, tmp_path, audit_clean):
    path = write_csv(tmp_path, [trade("alice", "BUY", 10, "Yes", "0.5", 0), trade("bob", "BUY", 10, "Yes", "0.5", 1)])
    rows, _ = replay.read_trades(path)
    ids, _ = replay.ensure_markets_local(rows, scale=replay.DEFAULT_SCALE)
    exchange = replay.LocalExchange()
    bob = exchange.agent("pm-bob", "")
    agent_suspend(agent_id=bob.id)  # bob's crossing order fails after the liquidity order was placed

    report = replay.replay(rows, exchange, market_ids=ids)

    assert report.replayed == 1
    assert "agent_suspended" in report.failed[0]
    assert Order.objects.count() == 2  # alice's row only
    assert not Order.objects.filter(agent=bob).exists()
    audit_clean()


def test_rows_of_a_closed_market_are_reported_and_skipped(db, tmp_path, audit_clean):
    path = write_csv(tmp_path, [trade("alice", "BUY", 10, "Yes", "0.5", 0)])
    rows, _ = replay.read_trades(path)
    ids, _ = replay.ensure_markets_local(rows, scale=replay.DEFAULT_SCALE)
    market_close(market_id=ids[FED])
    report = replay.replay(rows, replay.LocalExchange(), market_ids=ids)
    assert report.replayed == 0
    assert "market_closed" in report.failed[0]
    assert not Order.objects.exists()
    audit_clean()


def test_the_command_prints_each_market_with_our_and_the_real_last_price_and_a_clean_audit(db, tmp_path):
    path = write_csv(
        tmp_path,
        [trade("alice", "BUY", 30, "Yes", "0.412", 0), trade("bob", "BUY", 40, "No", "0.55", 1, question=HIKE)],
    )
    out = run(path)
    fed = next(line for line in out.splitlines() if line.startswith(FED))
    assert fed.split()[-5:] == ["1", "1", "3", "0.41", "0.412"]  # rows, trades, volume, our last, real last
    hike = next(line for line in out.splitlines() if line.startswith(HIKE))
    assert hike.split()[-5:] == ["1", "1", "4", "0.45", "0.450"]
    assert "audit clean" in out


def test_limit_and_scale_choose_how_many_rows_and_how_many_contracts(db, tmp_path):
    path = write_csv(tmp_path, [trade("alice", "BUY", 10, "Yes", "0.5", 0), trade("bob", "BUY", 10, "Yes", "0.5", 1)])
    run(path, limit=1, scale=Decimal("0.5"))
    assert list(Trade.objects.values_list("taker_agent__name", "size")) == [("pm-alice", 5)]


def test_a_tiny_scaled_size_still_trades_one_contract(db):
    assert replay.contracts(Decimal("1.01"), Decimal("0.1")) == 1
    assert replay.contracts(Decimal("2572.19875"), Decimal("0.1")) == 257


def test_agent_names_are_valid_and_unique_ignoring_case():
    names = replay.agent_names(["Alice", "alice", "liquidity", "bad id!", "x" * 56])
    assert all(NAME_RE.match(name) for name in names.values())
    assert len({name.lower() for name in names.values()}) == 5
    assert "pm-liquidity" not in {name.lower() for name in names.values()}


def test_it_refuses_a_file_without_the_expected_columns(db, tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(CommandError, match="lacks the column"):
        run(str(path))


def test_it_replays_through_the_http_api_of_a_running_server(live_server, tmp_path, audit_clean):
    path = write_csv(
        tmp_path,
        [
            trade("alice", "BUY", 100, "Yes", "0.456", 0),
            trade("alice", "SELL", 50, "Yes", "0.50", 1),
            trade("bob", "SELL", 30, "No", "0.20", 2),
        ],
    )
    run(path, markets_only=True)
    out = run(path, url=live_server.url, prefix="api-")
    assert "3 replayed" in out
    assert "1 sells of contracts the trader did not hold" in out
    assert list(Trade.objects.order_by("seq").values_list("price", "size", "taker_agent__name")) == [
        (Decimal("0.46"), 10, "api-alice"),
        (Decimal("0.50"), 5, "api-alice"),
        (Decimal("0.80"), 3, "api-bob"),  # SELL NO at 0.20 = BUY YES at 0.80
    ]
    assert Position.objects.get(agent__name="api-alice").yes_shares == 5
    assert not Order.objects.filter(status__in=Order.RESTING).exists()
    audit_clean()


def test_over_http_it_asks_to_import_the_markets_first(live_server, tmp_path):
    path = write_csv(tmp_path, [trade("alice", "BUY", 10, "Yes", "0.5", 0)])
    with pytest.raises(CommandError, match="--markets-only"):
        run(path, url=live_server.url)


def test_over_http_the_run_stops_cleanly_when_the_liquidity_agent_runs_out(live_server, tmp_path):
    rows = [trade(f"t{i}", "BUY", 10_000, "Yes", "0.50", i) for i in range(4)]  # each needs 500.00 of liquidity
    path = write_csv(tmp_path, rows)
    run(path, markets_only=True)
    out = run(path, url=live_server.url, prefix="api-")
    assert "2 replayed" in out
    assert "ran out of credits" in out
    assert not Order.objects.filter(status__in=Order.RESTING).exists()


def test_bootstrap_creates_the_operator_imports_the_real_data_once(db, monkeypatch):
    if not (DATA / "polymarket").exists():  # a missing data set is a failure, never a skip
        pytest.fail(
            f"The real market data is missing: {DATA / 'polymarket'} must exist "
            "(../shared/data beside this checkout, as `make run` needs it).",
            pytrace=False,
        )
    monkeypatch.delenv("MOLTSTREET_ADMIN_USER", raising=False)
    monkeypatch.delenv("MOLTSTREET_ADMIN_PASSWORD", raising=False)
    out = io.StringIO()
    call_command("bootstrap", data=str(DATA), replay_limit=40, random_password=True, stdout=out, stderr=io.StringIO())
    assert "log in at http://127.0.0.1:8000/admin/ as 'operator'" in out.getvalue()
    password = re.search(r"with password (\S+) \(shown only this once\)", out.getvalue()).group(1)
    assert get_user_model().objects.get(username="operator").check_password(password)
    assert Market.objects.count() == 94
    assert Trade.objects.exists()
    assert "all invariants hold" in out.getvalue()

    again = io.StringIO()
    call_command("bootstrap", data=str(DATA), stdout=again, stderr=io.StringIO())
    assert "nothing to import" in again.getvalue()
    assert "log in" not in again.getvalue()
    assert Market.objects.count() == 94
