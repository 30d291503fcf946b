"""Tools that run against MoltStreet but are not part of it (the soak load generator, :mod:`tools.soak`); the
benchmarks live beside them in ``bench/``. No app package imports from here (``moltstreet/tests/test_layout.py``)."""
