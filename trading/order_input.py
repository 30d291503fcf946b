"""The parsing of an order's fields: the one place their rules stand (a price on the tick, a size, a time in force).

The order service (``trading.orders.order_place``) parses what it is given here, and nothing else validates an order:
the API hands it the values of the request body as they came (JSON strings, numbers, booleans, ``null``), the
management commands and the tests Python values. A field is read as the API has always read it (DRF's reading): a
number where text is expected is its text, text is trimmed, ``"3"`` and ``3.0`` are 3 contracts, ``"true"`` and ``1``
are true. A price's error has the code ``invalid_price``, a size's ``invalid_size``; any other field's is
``invalid_request``, with ``detail`` mapping the field to its problems (``{"side": ["side must be YES or NO."]}``).
A field that is not an order's is refused, never ignored (:func:`check_order_fields`).
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from moltstreet.errors import InvalidRequest
from moltstreet.money import CENT, MAX_PRICE, MIN_PRICE
from moltstreet.strict import refuse_unknown
from trading import matching
from trading.models import CLIENT_ORDER_ID_MAX, Action, Side, TimeInForce

# The longest explanation an agent may give with an order's forecast.
REASONING_MAX = 5000
# A forecast (the agent's probability of YES, 0-1) has at most this many decimal places.
FORECAST_PLACES = 4
# Longer number text is refused unread, whatever it says (a guard against huge inputs).
NUMBER_TEXT_MAX = 1000

_FORECAST_UNIT = Decimal(1).scaleb(-FORECAST_PLACES)
# A whole number may be written with a decimal point and zeros after it ("3.0", "3.").
_WHOLE_TAIL = re.compile(r"\.0*\s*$")
# The spellings of true and false a flag accepts besides JSON's own (text compared lower-cased; the number 1 is also
# 1.0, and 0 is 0.0).
_TRUE = frozenset({"t", "y", "yes", "true", "on", "1", 1})
_FALSE = frozenset({"f", "n", "no", "false", "off", "0", 0})


def _refuse(field: str, problem: str) -> InvalidRequest:
    """The ``invalid_request`` error of one field: ``problem`` is the message and the field's entry in ``detail``."""
    return InvalidRequest(problem, detail={field: [problem]})


def _echo(value: Any) -> str | None:
    """A value in an error's ``detail``, as text (``null`` stays ``null``)."""
    return None if value is None else str(value)


def _number_text(value: Any) -> str | None:
    """``value`` as number text: text trimmed, a number as its text; ``None`` for a boolean, anything else, or text
    longer than :data:`NUMBER_TEXT_MAX`."""
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        text = str(value)
    else:
        return None
    return text if len(text) <= NUMBER_TEXT_MAX else None


def _decimal(value: Any) -> Decimal | None:
    """``value`` as a finite :class:`Decimal`, or ``None`` when it is not a number."""
    text = _number_text(value)
    try:
        number = Decimal(text) if text is not None else None
    except (InvalidOperation, ValueError):
        return None
    return number if number is not None and number.is_finite() else None


def parse_price(value: Any) -> Decimal:
    """A YES or NO limit price: decimal text or a number in [0.01, 0.99] on the 0.01 tick (trailing zeros past the
    tick are fine: ``"0.550"``), returned with two places.

    Raises :class:`InvalidRequest` (code ``invalid_price``, ``detail.price``) otherwise.
    """
    price = _decimal(value)
    if price is None:
        raise InvalidRequest(
            "price must be a decimal between 0.01 and 0.99.", code="invalid_price", detail={"price": _echo(value)}
        )
    if price < MIN_PRICE or price > MAX_PRICE:
        raise InvalidRequest(
            "price must be between 0.01 and 0.99.", code="invalid_price", detail={"price": _echo(value)}
        )
    if price != price.quantize(CENT):
        raise InvalidRequest(
            "price must be on the 0.01 tick.", code="invalid_price", detail={"price": _echo(value), "tick": "0.01"}
        )
    return price.quantize(CENT)


def parse_size(value: Any) -> int:
    """Whole contracts from 1 to ``settings.MOLTSTREET["MAX_ORDER_SIZE"]``: an integer, or its text, or a whole number
    written with a decimal point (``3.0``, ``"3.0"``).

    Raises :class:`InvalidRequest` (code ``invalid_size``, ``detail.size``; ``detail.max`` when out of range).
    """
    if type(value) is not int:
        whole = None
        if not isinstance(value, bool) and not (isinstance(value, str) and len(value) > NUMBER_TEXT_MAX):
            with contextlib.suppress(ValueError):
                whole = int(_WHOLE_TAIL.sub("", str(value)))
        if whole is None:
            raise InvalidRequest(
                "size must be a whole number of contracts.", code="invalid_size", detail={"size": _echo(value)}
            )
        value = whole
    limit = settings.MOLTSTREET["MAX_ORDER_SIZE"]
    if value < 1 or value > limit:
        raise InvalidRequest(
            f"size must be between 1 and {limit} contracts.", code="invalid_size", detail={"size": value, "max": limit}
        )
    return value


def parse_forecast(value: Any) -> Decimal | None:
    """The agent's probability of YES stated with an order: a number from 0 to 1 with at most
    :data:`FORECAST_PLACES` decimal places, returned with that many; ``None`` (or blank text) for none.

    Raises :class:`InvalidRequest` (``detail.forecast``) otherwise.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = _decimal(value)
    if number is None or not _fits(number, whole=1, places=FORECAST_PLACES) or not 0 <= number <= 1:
        raise _refuse("forecast", f"forecast must be a number from 0 to 1 with at most {FORECAST_PLACES} decimals.")
    return number.quantize(_FORECAST_UNIT)


def _fits(number: Decimal, *, whole: int, places: int) -> bool:
    """Whether ``number`` as written has at most ``whole`` digits before the point, ``places`` after it, and
    ``whole + places`` in all (``"0.50000"`` has five places)."""
    _sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite
    if exponent >= 0:
        total, decimals = len(digits) + exponent, 0
    else:
        total, decimals = max(len(digits), -exponent), -exponent
    return total <= whole + places and decimals <= places and total - decimals <= whole


def _choice(field: str, value: Any, choices: list[str]) -> str:
    """``value`` if it is one of ``choices`` exactly so spelled; the refusal lists them (``side must be YES or
    NO.``) and, for another spelling of one (``"yes"``), says which to send."""
    if isinstance(value, str) and value in choices:
        return str(value)
    problem = f"{field} must be {', '.join(choices[:-1])} or {choices[-1]}."
    if isinstance(value, str) and value.strip().upper() in choices:
        problem += f' Values are case-sensitive: send "{value.strip().upper()}".'
    raise _refuse(field, problem)


def parse_flag(field: str, value: Any) -> bool:
    """``true``/``false``, or one of their spellings in :data:`_TRUE` and :data:`_FALSE`. Raises
    :class:`InvalidRequest` (``detail`` naming ``field``) otherwise."""
    if value is True or value is False:
        return value
    key = value.lower() if isinstance(value, str) else value
    try:
        if key in _TRUE:
            return True
        if key in _FALSE:
            return False
    except TypeError:  # a list or an object
        pass
    raise _refuse(field, f"{field} must be true or false.")


def _text(field: str, value: Any, limit: int, *, blank: bool) -> str:
    """Text (or a number as its text), trimmed, at most ``limit`` characters; blank only where ``blank`` allows.
    NUL and lone surrogates are refused: PostgreSQL stores neither."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _refuse(field, f"{field} must be a string.")
    text = str(value).strip()
    if not text:
        if blank:
            return ""
        raise _refuse(field, f"{field} must not be blank.")
    if len(text) > limit:
        raise _refuse(field, f"{field} must be at most {limit} characters.")
    if "\x00" in text:
        raise _refuse(field, f"{field} must not contain NUL characters.")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise _refuse(field, f"{field} must not contain surrogate characters.") from None
    return text


def _time(field: str, value: Any) -> datetime | None:
    """An ISO 8601 date and time (text) or a :class:`datetime`, in the current time zone (UTC) if it names none;
    ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed: datetime | None = value
    elif isinstance(value, date):
        parsed = None
    else:
        try:
            parsed = parse_datetime(value)
        except (ValueError, TypeError):
            parsed = None
    if parsed is None:
        raise _refuse(field, f"{field} must be an ISO 8601 date and time, such as 2030-01-01T12:00:00Z.")
    zone = timezone.get_current_timezone()
    if timezone.is_naive(parsed):
        return timezone.make_aware(parsed, zone)
    try:
        return parsed.astimezone(zone)
    except OverflowError:
        raise _refuse(field, f"{field} is out of range.") from None


@dataclass(frozen=True)
class OrderInput:
    """An order request, parsed: every field checked against its rule, nothing looked up yet.

    ``side`` and ``action`` are :class:`~trading.models.Side` and :class:`~trading.models.Action` values, ``price``
    the limit on the order's own side (credits per contract, 0.01-0.99 on the 0.01 tick), ``size`` whole contracts,
    ``expires_at`` an aware datetime (GTD only), ``forecast`` the agent's stated probability of YES (0-1, or
    ``None``), ``reasoning`` trimmed text. ``book_side``/``book_price`` are where the order rests in the YES-price
    book (:func:`trading.matching.book_position`).
    """

    side: str
    action: str
    price: Decimal
    size: int
    time_in_force: str
    expires_at: datetime | None
    post_only: bool
    client_order_id: str | None
    forecast: Decimal | None
    reasoning: str

    @property
    def book_position(self) -> tuple[str, Decimal]:
        return matching.book_position(self.side, self.action, self.price)

    @property
    def may_rest(self) -> bool:
        """GTC and GTD orders may rest in the book (and count towards the open-order limit); IOC and FOK never do."""
        return self.time_in_force in (TimeInForce.GTC, TimeInForce.GTD)

    def stored_fields(self) -> dict[str, Any]:
        """The fields an :class:`~trading.models.Order` stores as they were given, with where it rests in the book
        (``book_side``, ``book_price``); ``reasoning`` goes with the forecast instead."""
        book_side, book_price = self.book_position
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "reasoning"}
        return {**fields, "book_side": book_side, "book_price": book_price}


def parse_order(
    *,
    side: Any,
    action: Any,
    price: Any,
    size: Any,
    time_in_force: Any = TimeInForce.GTC,
    expires_at: Any = None,
    post_only: Any = False,
    client_order_id: Any = None,
    forecast: Any = None,
    reasoning: Any = "",
) -> OrderInput:
    """The :class:`OrderInput` of an order's fields as a client sent them (a field the client left out is the
    argument's default; ``None`` for a required one). ``side`` YES/NO, ``action`` BUY/SELL and ``time_in_force``
    GTC/GTD/IOC/FOK exactly so spelled; ``price`` :func:`parse_price`; ``size`` :func:`parse_size`; ``expires_at`` an
    ISO 8601 time, only and always with GTD; ``post_only`` a flag, not with IOC or FOK; ``client_order_id`` text of
    1-:data:`CLIENT_ORDER_ID_MAX` characters or ``None``; ``forecast`` :func:`parse_forecast`; ``reasoning`` text of
    at most :data:`REASONING_MAX` characters. Whether a GTD order's ``expires_at`` is still in the future is the
    service's check (a repeated request may return an order whose expiry has passed).

    Raises :class:`InvalidRequest`: ``invalid_price`` (:func:`parse_price`), ``invalid_size`` (:func:`parse_size`),
    ``invalid_request`` for the other fields (``detail`` maps the field to its problems) and for the combinations.
    """
    side = _choice("side", side, Side.values)
    action = _choice("action", action, Action.values)
    price, size = parse_price(price), parse_size(size)
    tif = _choice("time_in_force", time_in_force, TimeInForce.values)
    expires_at = _time("expires_at", expires_at)
    post_only = parse_flag("post_only", post_only)
    if client_order_id is not None:
        client_order_id = _text("client_order_id", client_order_id, CLIENT_ORDER_ID_MAX, blank=False)
    forecast = parse_forecast(forecast)
    reasoning = _text("reasoning", reasoning, REASONING_MAX, blank=True)
    if tif == TimeInForce.GTD and expires_at is None:
        raise InvalidRequest("A GTD order needs expires_at in the future.", detail={"expires_at": None})
    if tif != TimeInForce.GTD and expires_at is not None:
        raise InvalidRequest("expires_at is only allowed with time_in_force GTD.", detail={"time_in_force": tif})
    if post_only and tif in (TimeInForce.IOC, TimeInForce.FOK):
        raise InvalidRequest("post_only cannot be combined with IOC or FOK.", detail={"time_in_force": tif})
    return OrderInput(
        side=side,
        action=action,
        price=price,
        size=size,
        time_in_force=tif,
        expires_at=expires_at,
        post_only=post_only,
        client_order_id=client_order_id,
        forecast=forecast,
        reasoning=reasoning,
    )


# The fields of an order, as parse_order takes them.
ORDER_FIELDS: tuple[str, ...] = tuple(inspect.signature(parse_order).parameters)


def check_order_fields(names: Iterable[str], *, besides: Iterable[str] = ()) -> None:
    """Refuse an order request with a field that is not an order's (:data:`ORDER_FIELDS`, or one of ``besides``,
    such as the API's ``market``): a misspelt or made-up field (``"postonly": true``) is never ignored.

    Raises :class:`InvalidRequest` (``invalid_request``, ``detail`` naming each unknown field with the known ones).
    """
    refuse_unknown("field", names, [*besides, *ORDER_FIELDS])
