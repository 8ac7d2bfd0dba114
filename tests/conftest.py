"""Suite-wide fixtures, implemented in tests/support/services.py.

Registered as a plugin so every test can ask for: ``kafka`` (session Tansu broker),
``private_kafka`` (a broker of the test's own, for restarts), ``redis_url`` (session),
``redis_client`` (flushed test database), ``channel`` (unique pub/sub channel) and
``postgres_dsn`` (a throwaway PostgreSQL database for the session); and, from
tests/support/ci.py, the rule that a skip fails the run under CI.
"""

pytest_plugins = ["tests.support.services", "tests.support.ci"]
