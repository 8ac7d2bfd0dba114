"""Suite-wide fixtures; the code behind them is the support library in tests/support/.

Registered as plugins so every test can ask for, from tests/support/services.py:
``kafka`` (session Tansu broker), ``private_kafka`` (a broker of the test's own, for
restarts), ``redis_url`` (session), ``redis_client`` (flushed test database),
``channel`` (unique pub/sub channel), ``postgres_dsn`` (a throwaway PostgreSQL
database for the session) and ``ledger_dsn`` (that database with an empty render
ledger); and, from tests/support/ci.py, the rule that a skip fails the run under CI.
Helpers that are not fixtures (running the job, event factories, fakes, the poison
corpus) are imported from tests/support/ directly; tests/support/__init__.py says
which module has what.
"""

pytest_plugins = ["tests.support.services", "tests.support.ci"]
