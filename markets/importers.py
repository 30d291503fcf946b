"""Importers of real questions: the prediction-market questions of a ForecastBench question set.

ForecastBench (Forecasting Research Institute, ``forecastingresearch/forecastbench-datasets``, CC BY-SA 4.0) bundles
questions of prediction markets (Manifold, Metaculus, INFER, Polymarket) with questions generated from data series
(ACLED, FRED, …). Only the market questions become markets here; each keeps its source, URL, the source's probability
on the freeze date and an attribution naming ForecastBench and the licence.

This module creates markets through :func:`markets.services.market_import`. Closing and resolving belong to
the trading services (``markets`` does not import ``trading``), so :func:`import_forecastbench` receives those two
services from its caller, the management command.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.db import models, transaction
from django.utils import timezone
from django.utils.html import strip_tags

from markets.models import Market, Outcome, Resolver
from markets.services import market_import
from moltstreet.errors import MoltStreetError

# ForecastBench sources that are prediction markets; every other source is a data series and is skipped.
MARKET_SOURCES = {"manifold": "Manifold", "metaculus": "Metaculus", "infer": "INFER", "polymarket": "Polymarket"}


def _max_length(name: str) -> int:
    """The ``max_length`` of one of ``Market``'s text fields, in characters."""
    field = Market._meta.get_field(name)
    if not isinstance(field, models.Field) or field.max_length is None:
        raise TypeError(f"Market.{name} has no max_length")
    return field.max_length


QUESTION_LIMIT = _max_length("question")
EXTERNAL_ID_LIMIT = _max_length("external_id")
MISSING = {"", "n/a", "na", "none", "null"}
DATASET_URL = "https://github.com/forecastingresearch/forecastbench-datasets"
# The resolver named on markets resolved to a real outcome from the data set (a source: final at once).
FORECASTBENCH = "ForecastBench"
LICENCE_URL = "https://creativecommons.org/licenses/by-sa/4.0/"


class BadQuestion(ValueError):
    """A question that cannot be imported; the message says why."""


@dataclass(frozen=True)
class Question:
    """One ForecastBench market question, parsed and ready to become a market."""

    source: str
    external_id: str
    question: str
    description: str
    resolution_criteria: str
    source_url: str
    deadline: datetime
    reference_price: Decimal | None
    outcome: str | None  # YES or NO when the resolution set knows the real outcome
    attribution: str
    # What the outcome rests on, recorded with the resolution: the resolution row's value and date, the question set.
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportReport:
    """What an import did. ``problems`` lists the questions reported and skipped."""

    questions: int = 0
    created: int = 0
    existing: int = 0
    series: int = 0
    resolved: int = 0
    closed: int = 0
    reopened: int = 0
    open: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.questions} questions: {self.created} markets created, {self.existing} already imported, "
            f"{self.series} data-series questions skipped, {len(self.problems)} bad questions skipped; "
            f"{self.resolved} resolved, {self.closed} closed, {self.reopened} reopened for trading, "
            f"{self.open} open with their real deadline."
        )


# --------------------------------------------------------------------------------------------------------------------
# Parsing


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in MISSING)


def _text(value: Any) -> str:
    return "" if _missing(value) else str(value)


def clean_text(value: Any) -> str:
    """Plain text from a source's text field: HTML (as INFER writes it) becomes text, blank runs shrink."""
    text = _text(value)
    if re.search(r"<[a-zA-Z/][^>]*>", text):
        text = re.sub(r"(?i)<br\s*/?>|</(p|div|li|ul|ol|h\d)>", "\n", text)
        text = re.sub(r"(?i)<li[^>]*>", "- ", text)
        text = html.unescape(strip_tags(text))
    lines = [re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut at a word boundary with an ellipsis when longer than ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def parse_datetime_utc(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time (naive means UTC); ``None`` for a missing or unreadable value."""
    if _missing(value):
        return None
    text = str(value).strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if len(text) == 10:  # a bare date: the end of that day
        parsed = datetime.combine(parsed.date(), time(23, 59, 59))
    return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)


def parse_probability(value: Any) -> Decimal | None:
    """The source's probability of YES as a ``Decimal`` in [0, 1], or ``None`` when missing or out of range."""
    if _missing(value) or isinstance(value, bool):
        return None
    try:
        probability = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    if not probability.is_finite() or not 0 <= probability <= 1:
        return None
    return probability.quantize(Decimal("0.0001"))


def index_resolutions(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Resolution rows by ``(id, source)``, oldest resolution date first. Combined questions (list ids) are left out."""
    index: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("source"), str):
            index.setdefault((row["id"], row["source"]), []).append(row)
    for found in index.values():
        found.sort(key=lambda r: str(r.get("resolution_date") or ""))
    return index


def known_outcome(rows: list[dict[str, Any]]) -> str | None:
    """The real outcome: the last resolved row's ``resolved_to`` (1.0 YES, 0.0 NO); ``None`` when unresolved."""
    row = _last_resolved(rows)
    value = parse_probability(row.get("resolved_to")) if row else None
    if value == 1:
        return Outcome.YES
    if value == 0:
        return Outcome.NO
    return None  # unresolved, or resolved to something that is not YES or NO (e.g. annulled): no binary outcome


def _last_resolved(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((row for row in reversed(rows) if row.get("resolved") is True), None)


def outcome_evidence(rows: list[dict[str, Any]], question_set: str) -> dict[str, Any]:
    """What a resolution from ForecastBench rests on: the last resolved row's ``resolved_to`` and
    ``resolution_date``, and the question set; empty when no row is resolved."""
    row = _last_resolved(rows)
    if row is None:
        return {}
    return {
        "dataset": FORECASTBENCH,
        "question_set": question_set,
        "resolved_to": _text(row.get("resolved_to")),
        "resolution_date": _text(row.get("resolution_date")),
    }


def attribution_for(source: str, url: str, question_set: str) -> str:
    venue = MARKET_SOURCES[source]
    origin = f"{venue} ({url})" if url else venue
    return (
        f"Question from {origin}, via ForecastBench by the Forecasting Research Institute "
        f"(forecastingresearch/forecastbench-datasets, {DATASET_URL}, question set {question_set}). "
        f"Licensed under CC BY-SA 4.0 ({LICENCE_URL}); this text is shared under the same licence. "
        "Changes: HTML and whitespace cleaned, long questions shortened."
    )


def parse_question(
    raw: Any, *, resolutions: dict[tuple[str, str], list[dict[str, Any]]], question_set: str
) -> Question:
    """Turn one ForecastBench market question into a :class:`Question`; raises :class:`BadQuestion` with the reason.

    The deadline is ``market_info_close_datetime``; without it, the last resolution date of the question.
    """
    if not isinstance(raw, dict):
        raise BadQuestion("not a JSON object")
    source, external_id = _text(raw.get("source")).strip(), _text(raw.get("id")).strip()
    if source not in MARKET_SOURCES:
        raise BadQuestion(f"source {source!r} is not a prediction market")
    if not external_id:
        raise BadQuestion("no id")
    if len(external_id) > EXTERNAL_ID_LIMIT:
        raise BadQuestion("id longer than 100 characters")
    text = shorten(clean_text(raw.get("question")), QUESTION_LIMIT)
    if not text:
        raise BadQuestion("no question text")
    url = _text(raw.get("url")).strip()
    if url and (not url.startswith(("https://", "http://")) or len(url) > 500):
        url = ""
    rows = resolutions.get((external_id, source), [])
    deadline = parse_datetime_utc(raw.get("market_info_close_datetime"))
    if deadline is None:
        dates = [parse_datetime_utc(r.get("resolution_date")) for r in rows]
        deadline = max((d for d in dates if d is not None), default=None)
    if deadline is None:
        raise BadQuestion("no close date (market_info_close_datetime) and no resolution date")
    criteria = clean_text(raw.get("resolution_criteria"))
    extra = clean_text(raw.get("market_info_resolution_criteria"))
    if extra and extra not in criteria:
        criteria = f"{criteria}\n\n{extra}" if criteria else extra
    return Question(
        source=source,
        external_id=external_id,
        question=text,
        description=clean_text(raw.get("background")),
        resolution_criteria=criteria,
        source_url=url,
        deadline=deadline,
        reference_price=parse_probability(raw.get("freeze_datetime_value")),
        outcome=known_outcome(rows),
        attribution=attribution_for(source, url, question_set),
        evidence=outcome_evidence(rows, question_set),
    )


def load_json(path: str | Path, key: str) -> tuple[dict[str, Any], list[Any]]:
    """Read a ForecastBench JSON file; returns the document and its list under ``key``.

    Raises :class:`ValueError` for an unreadable file, invalid JSON or a missing list.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise ValueError(f"{path} has no list {key!r}")
    return document, document[key]


# --------------------------------------------------------------------------------------------------------------------
# Importing


def import_forecastbench(
    *,
    questions_path: str | Path,
    resolutions_path: str | Path,
    close_market: Callable[..., Market],
    resolve_market: Callable[..., Market],
    resolve: bool = False,
    reopen_days: int | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] = lambda line: None,
    counted: Callable[[int, int], None] = lambda done, total: None,
) -> ImportReport:
    """Import the market questions of a ForecastBench question set; returns what happened.

    ``progress`` gets a line per question; ``counted(done, total)`` is called after each (for a progress display).

    Each question becomes a market (via ``market_import``, no creator, no fee) with its real deadline; a market
    whose deadline has passed is closed with ``close_market(market_id=…)``. With ``resolve``, a question whose real
    outcome is known is resolved to it with ``resolve_market(market_id=…, outcome=…, resolver=…)``, the resolver
    being the source ``ForecastBench`` with the resolution row as its evidence (closed first if its deadline
    passed). With ``reopen_days``, a question whose deadline has passed and that is not resolved is instead opened
    for trading until ``now + reopen_days`` days and marked ``is_historical``.

    Idempotent: a question already imported (same source and id) is not created again, but is still closed or
    resolved as above when it is not yet. Each question is one transaction, so a bad question leaves nothing
    behind; it is listed in ``report.problems`` and skipped. Raises :class:`ValueError` for unreadable files.
    """
    now = now or timezone.now()
    document, questions = load_json(questions_path, "questions")
    _, resolution_rows = load_json(resolutions_path, "resolutions")
    question_set = str(document.get("question_set") or Path(questions_path).name)
    resolutions = index_resolutions(resolution_rows)
    report = ImportReport(questions=len(questions))
    for number, raw in enumerate(questions, start=1):
        if number > 1:
            counted(number - 1, len(questions))
        if isinstance(raw, dict) and raw.get("source") not in MARKET_SOURCES and raw.get("source"):
            report.series += 1
            continue
        label = f"question {number}" + (f" ({raw.get('source')} {raw.get('id')})" if isinstance(raw, dict) else "")
        try:
            question = parse_question(raw, resolutions=resolutions, question_set=question_set)
            with transaction.atomic():
                action = _import_one(
                    question,
                    report=report,
                    resolve=resolve,
                    reopen_days=reopen_days,
                    now=now,
                    close_market=close_market,
                    resolve_market=resolve_market,
                )
        except (BadQuestion, MoltStreetError) as exc:
            report.problems.append(f"{label}: {exc}")
            progress(f"skipped  {label}: {exc}")
            continue
        progress(f"{action:<24} {question.source:<10} {shorten(question.question, 80)}")
    counted(len(questions), len(questions))
    return report


def _import_one(
    question: Question,
    *,
    report: ImportReport,
    resolve: bool,
    reopen_days: int | None,
    now: datetime,
    close_market: Callable[..., Market],
    resolve_market: Callable[..., Market],
) -> str:
    """Create (or find) the market of one question and bring it to its state; returns a word for the progress line.

    Counters are only updated once every step has succeeded, so a rolled-back question is not counted.
    """
    market = Market.objects.filter(source=question.source, external_id=question.external_id).first()
    created = market is None
    will_resolve = resolve and question.outcome is not None
    reopened = created and reopen_days is not None and question.deadline <= now and not will_resolve
    if market is None:
        market = market_import(
            question=question.question,
            deadline=now + timedelta(days=reopen_days) if reopened and reopen_days is not None else question.deadline,
            source=question.source,
            external_id=question.external_id,
            description=question.description,
            resolution_criteria=question.resolution_criteria,
            source_url=question.source_url,
            attribution=question.attribution,
            reference_price=question.reference_price,
            is_historical=reopened,
        )
    action = "created" if created else "already imported"
    if market.status == Market.Status.RESOLVED:
        action += ", already resolved"
    elif will_resolve:
        if market.status == Market.Status.OPEN and market.deadline <= now:
            market = close_market(market_id=market.id)
        resolver = Resolver.source(FORECASTBENCH, question.evidence)
        market = resolve_market(market_id=market.id, outcome=question.outcome, resolver=resolver)
        action += f", resolved {question.outcome}"
        report.resolved += 1
    elif market.status == Market.Status.OPEN and market.deadline <= now:
        market = close_market(market_id=market.id)
        action += ", closed"
        report.closed += 1
    elif reopened:
        action += ", reopened"
        report.reopened += 1
    elif created and market.status == Market.Status.OPEN:
        report.open += 1
    if created:
        report.created += 1
    else:
        report.existing += 1
    return action
