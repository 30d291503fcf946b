"""Money and price helpers (DESIGN section 2): credits and YES prices are ``Decimal`` with two places, never float."""

from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypedDict

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
ONE = Decimal("1.00")
HALF = Decimal("0.50")
MIN_PRICE = Decimal("0.01")
MAX_PRICE = Decimal("0.99")


class DecimalDigits(TypedDict):
    """The digits of a ``DecimalField``, spread into it as ``**MONEY`` or ``**PRICE`` (typed so mypy checks them)."""

    max_digits: int
    decimal_places: int


def quantize(value: Decimal | int | str) -> Decimal:
    """Round to whole cents, half to even (the one rounding rule for credits and prices)."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_EVEN)


def complement(price: Decimal) -> Decimal:
    """The other side's price: a NO contract at ``1 - yes_price`` (and back)."""
    return ONE - price
