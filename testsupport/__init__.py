"""Test support shared by the app test suites, kept out of the product's packages (nothing outside tests imports it;
``moltstreet/tests/test_layout.py`` checks):

- :mod:`testsupport.api`: the checked API client, shape assertions and the snapshot a rejected request must leave alone.
- :mod:`testsupport.e2e`: real daphne servers on the test database, HTTP and websocket clients, headless Chromium.
- :mod:`testsupport.faults`: private PostgreSQL and Redis a fault-injection test may stop and kill, SIGKILL helpers.
"""
