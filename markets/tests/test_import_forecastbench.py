"""``manage.py import_forecastbench``, ``markets.importers`` and the ``market_import`` service."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from agents.models import LedgerEntry
from agents.tests.factories import AgentFactory
from markets.models import Market, MarketEvent
from markets.services import market_import
from moltstreet.errors import InvalidRequest
from trading.orders import order_place

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "forecastbench"
PAST = "2024-12-31T00:00:00+00:00"
FUTURE = (timezone.now() + timedelta(days=400)).isoformat()


def question(qid: str, source: str = "manifold", **fields) -> dict:
    """A ForecastBench question as the data set writes it; ``fields`` override."""
    base = {
        "id": qid,
        "source": source,
        "question": f"Will thing {qid} happen?",
        "resolution_criteria": f"Resolves to the outcome of the question found at https://example.org/{qid}.",
        "background": f"Background of {qid}.",
        "market_info_open_datetime": "2024-01-01T00:00:00+00:00",
        "market_info_close_datetime": PAST,
        "market_info_resolution_criteria": "N/A",
        "url": f"https://example.org/{qid}",
        "freeze_datetime": "2024-07-12T00:00:00+00:00",
        "freeze_datetime_value": "0.25",
        "freeze_datetime_value_explanation": "The market value.",
        "source_intro": "…",
        "combination_of": "N/A",
        "resolution_dates": "N/A",
    }
    return {**base, **fields}


def resolution(qid: str, source: str = "manifold", value: float = 1.0, resolved: bool = True, date="2025-01-01"):
    return {
        "id": qid,
        "source": source,
        "resolution_date": date,
        "resolved_to": value,
        "resolved": resolved,
        "direction": None,
    }


QUESTIONS = [
    question("m-yes", "manifold"),  # past, resolved YES
    question("mc-open", "metaculus", market_info_close_datetime=FUTURE),  # future, unknown outcome
    question("pm-no-future", "polymarket", market_info_close_datetime=FUTURE, freeze_datetime_value="0.8"),
    question("inf-past", "infer", freeze_datetime_value="N/A"),  # past, unknown outcome
    question("acled-1", "acled"),  # a data series
    question("fred-1", "fred"),  # a data series
]
RESOLUTIONS = [
    resolution("m-yes", "manifold", 1.0),
    # Several rows: the last resolved one is the outcome (NO), not the earlier unresolved market value.
    resolution("pm-no-future", "polymarket", 0.62, resolved=False, date="2024-08-01"),
    resolution("pm-no-future", "polymarket", 0.0, date="2024-12-01"),
    resolution("inf-past", "infer", 0.4, resolved=False),
    resolution(["m-yes", "inf-past"], "manifold", 1.0),  # a combination question: ignored
    resolution("acled-1", "acled", 0.0),
]


def write(tmp_path: Path, questions=QUESTIONS, resolutions=RESOLUTIONS) -> tuple[str, str]:
    q = tmp_path / "set.questions.json"
    r = tmp_path / "set.resolutions.json"
    q.write_text(
        json.dumps({"forecast_due_date": "2024-07-21", "question_set": "test-set.json", "questions": questions})
    )
    r.write_text(json.dumps({"forecast_due_date": "2024-07-21", "resolutions": resolutions}))
    return str(q), str(r)


def run(*args, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_forecastbench", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def files(tmp_path):
    return write(tmp_path)


def imported(external_id: str) -> Market:
    return Market.objects.get(external_id=external_id)


def test_it_imports_only_the_prediction_market_questions(db, files):
    out, _ = run(*files)
    assert sorted(Market.objects.values_list("source", flat=True)) == ["infer", "manifold", "metaculus", "polymarket"]
    assert "4 markets created" in out
    assert "2 data-series questions skipped" in out


def test_it_copies_the_question_fields_and_names_forecastbench_and_the_licence(db, files):
    run(*files)
    market = imported("m-yes")
    assert market.question == "Will thing m-yes happen?"
    assert market.description == "Background of m-yes."
    assert market.resolution_criteria == "Resolves to the outcome of the question found at https://example.org/m-yes."
    assert (market.source, market.source_url) == ("manifold", "https://example.org/m-yes")
    assert market.reference_price == Decimal("0.2500")
    assert market.deadline.isoformat() == PAST
    for text in ("ForecastBench", "Forecasting Research Institute", "forecastingresearch/forecastbench-datasets"):
        assert text in market.attribution
    assert "CC BY-SA 4.0" in market.attribution
    assert "Manifold (https://example.org/m-yes)" in market.attribution
    assert imported("inf-past").reference_price is None  # "N/A" is no price


def test_imported_markets_have_no_creator_and_cost_no_fee(db, files):
    run(*files)
    assert not Market.objects.filter(creator__isnull=False).exists()
    assert not LedgerEntry.objects.exists()


def test_without_flags_past_markets_are_closed_and_future_ones_stay_open(db, files, audit_clean):
    run(*files)
    assert imported("m-yes").status == Market.Status.CLOSED
    assert imported("inf-past").status == Market.Status.CLOSED
    assert imported("mc-open").status == Market.Status.OPEN
    assert imported("pm-no-future").status == Market.Status.OPEN
    assert list(imported("m-yes").events.values_list("seq", "data__event")) == [(1, "created"), (2, "closed")]
    audit_clean()


def test_rerunning_the_import_creates_nothing_twice(db, files):
    run(*files)
    out, _ = run(*files)
    assert Market.objects.count() == 4
    assert "0 markets created, 4 already imported" in out


def test_resolve_resolves_questions_with_a_known_outcome_to_the_last_resolved_row(db, files):
    out, _ = run(*files, resolve=True)
    assert (imported("m-yes").status, imported("m-yes").outcome) == ("resolved", "YES")
    assert (imported("pm-no-future").status, imported("pm-no-future").outcome) == ("resolved", "NO")
    assert imported("inf-past").status == Market.Status.CLOSED  # unresolved row: outcome unknown
    assert imported("mc-open").status == Market.Status.OPEN
    assert "2 resolved, 1 closed" in out
    events = list(imported("m-yes").events.values_list("data__event", flat=True))
    assert events == ["created", "closed", "resolved"]


def test_resolve_pays_out_positions_taken_before_the_outcome_was_applied(db, files, audit_clean):
    run(*files)  # pm-no-future is open: its deadline is ahead
    market = imported("pm-no-future")
    yes_buyer, no_buyer = AgentFactory(), AgentFactory()
    order_place(agent=yes_buyer, market_id=market.id, side="YES", action="BUY", price="0.70", size=10)
    order_place(agent=no_buyer, market_id=market.id, side="NO", action="BUY", price="0.30", size=10)

    out, _ = run(*files, resolve=True)

    market.refresh_from_db()
    assert (market.status, market.outcome) == ("resolved", "NO")
    yes_buyer.refresh_from_db()
    no_buyer.refresh_from_db()
    assert yes_buyer.balance == Decimal("993.00")  # paid 7.00, YES lost
    assert no_buyer.balance == Decimal("1007.00")  # paid 3.00, 10 NO pay 10.00
    assert "2 resolved" in out  # and the closed m-yes, already imported, resolves YES
    audit_clean()


def test_reopen_days_opens_past_questions_for_trading_as_historical(db, files):
    before = timezone.now()
    out, _ = run(*files, reopen_days=30)
    for external_id in ("m-yes", "inf-past"):
        market = imported(external_id)
        assert market.status == Market.Status.OPEN
        assert market.is_historical
        assert before + timedelta(days=30) <= market.deadline <= timezone.now() + timedelta(days=30)
    assert not imported("mc-open").is_historical
    assert "2 reopened for trading" in out
    result = order_place(
        agent=AgentFactory(), market_id=imported("inf-past").id, side="YES", action="BUY", price="0.40", size=1
    )
    assert result.order.status == "open"


def test_with_resolve_and_reopen_known_outcomes_resolve_and_the_rest_reopens(db, files):
    out, _ = run(*files, resolve=True, reopen_days=30)
    assert imported("m-yes").status == Market.Status.RESOLVED
    assert not imported("m-yes").is_historical
    assert imported("inf-past").status == Market.Status.OPEN
    assert imported("inf-past").is_historical
    assert "2 resolved, 0 closed, 1 reopened for trading, 1 open" in out


def test_it_reports_and_skips_malformed_questions(db, tmp_path):
    files = write(
        tmp_path,
        questions=[
            question("ok", "manifold"),
            question("no-text", "manifold", question="   "),
            question("no-date", "metaculus", market_info_close_datetime="N/A"),
            question("", "infer"),
            "not an object",
        ],
        resolutions=[],
    )
    out, err = run(*files)
    assert Market.objects.count() == 1
    assert "no question text" in err
    assert "no close date" in err
    assert "no id" in err
    assert "not a JSON object" in err
    assert "4 bad questions skipped" in out


def test_it_falls_back_to_the_resolution_date_without_a_close_date(db, tmp_path):
    files = write(
        tmp_path,
        questions=[question("d", "manifold", market_info_close_datetime="N/A")],
        resolutions=[resolution("d", "manifold", 0.0, date="2025-01-10")],
    )
    run(*files)
    assert imported("d").deadline.date().isoformat() == "2025-01-10"


def test_it_shortens_questions_longer_than_500_characters_at_a_word(db, tmp_path):
    long = "Will " + "very " * 150 + "long things happen?"
    run(*write(tmp_path, questions=[question("long", question=long)], resolutions=[]))
    text = imported("long").question
    assert len(text) <= 500
    assert text.endswith("very…")


def test_it_turns_html_backgrounds_into_text(db, tmp_path):
    background = '<div>First &amp; <a href="https://x.org">second</a>.</div><ul><li>one</li><li>two</li></ul>'
    run(*write(tmp_path, questions=[question("h", "infer", background=background)], resolutions=[]))
    assert imported("h").description == "First & second.\n- one\n- two"


def test_it_refuses_unreadable_files(db, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="cannot read"):
        run(str(bad), str(bad))


def test_it_imports_the_real_forecastbench_question_set(db, audit_clean):
    questions = DATA / "2024-07-21-human.questions.json"
    resolutions = DATA / "2024-07-21.resolutions.json"
    if not (questions.exists() and resolutions.exists()):  # a missing data set is a failure, never a skip
        pytest.fail(
            f"The real ForecastBench data is missing: {questions} and {resolutions} must exist "
            "(../shared/data beside this checkout, as `make run` needs it).",
            pytrace=False,
        )
    out, err = run(str(questions), str(resolutions), resolve=True, reopen_days=30)
    # stderr holds nothing but progress lines (one every few seconds, so how many depends on the machine's speed).
    err = "\n".join(line for line in err.splitlines() if not re.fullmatch(r"\d+/\d+ questions \(\d+%\)", line))
    assert Market.objects.count() == 90
    assert Market.objects.filter(status="resolved").count() == 57  # every known outcome
    # The other 33 are open: reopened when their deadline has passed (how many depends on today), else until it.
    assert Market.objects.filter(status="open").count() == 33
    assert not Market.objects.filter(status="open", deadline__lte=timezone.now()).exists()
    assert not err
    assert "110 data-series questions skipped" in out
    audit_clean()


def test_market_import_writes_the_created_event_and_refuses_a_duplicate(db):
    fields = {
        "question": "Will it rain?",
        "deadline": timezone.now() + timedelta(days=1),
        "source": "manifold",
        "external_id": "rain",
    }
    market = market_import(**fields, reference_price=Decimal("0.123456"))
    assert market.reference_price == Decimal("0.1235")
    assert list(MarketEvent.objects.filter(market=market).values_list("seq", "data__event")) == [(1, "created")]
    with pytest.raises(InvalidRequest) as error:
        market_import(**fields)
    assert error.value.code == "market_exists"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": ""}, "question must not be empty"),
        ({"external_id": ""}, "external_id must not be empty"),
        ({"question": "x" * 501}, "at most 500"),
        ({"reference_price": Decimal("1.5")}, "between 0 and 1"),
        ({"deadline": timezone.now().replace(tzinfo=None)}, "time zone"),
    ],
)
def test_market_import_refuses_bad_input(db, change, message):
    fields = {"question": "Q?", "deadline": timezone.now(), "source": "manifold", "external_id": "q", **change}
    with pytest.raises(InvalidRequest, match=message):
        market_import(**fields)


def test_a_long_import_shows_progress_on_stderr_and_ends_with_its_summary(db, files, monkeypatch):
    import functools

    from moltstreet.progress import Progress
    from trading.management.commands import import_forecastbench as command

    monkeypatch.setattr(command, "Progress", functools.partial(Progress, interval=0))  # as if each took long
    out, err = run(*files)
    assert err.splitlines()[0] == "1/6 questions (16%)"
    assert err.splitlines()[-1] == "6/6 questions (100%)"
    assert out.splitlines()[-1].startswith("6 questions: 4 markets created")
