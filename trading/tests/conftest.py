"""Hypothesis profiles of the exchange's property test (test_properties.py), chosen by ``PROPERTY_PROFILE``:

* ``short`` (the default, what ``make test`` runs): 10 sequences of 40 steps, about 25 seconds, since each step that
  changed something runs the full audit (about 15 queries and a ledger replay);
* ``long`` (``make test-long``): 300 sequences of 80 steps, about 20 minutes (``PROPERTY_EXAMPLES`` sets the count).

Neither is derandomized: every run draws new sequences, and a failure names its seed (test_properties.py).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "exchange-short",
    max_examples=10,
    stateful_step_count=40,
    deadline=None,
    database=None,  # no example database: a run replays nothing from an earlier one, only its seed reproduces it
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "exchange-long",
    settings.get_profile("exchange-short"),
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "300")),
    stateful_step_count=80,
)


@pytest.fixture
def property_settings() -> settings:
    """The Hypothesis settings of the property test: the profile ``PROPERTY_PROFILE`` names (``short`` or ``long``)."""
    name = os.environ.get("PROPERTY_PROFILE", "short")
    if name not in ("short", "long"):
        raise ValueError(f"PROPERTY_PROFILE must be short or long, not {name!r}")
    return settings.get_profile(f"exchange-{name}")
