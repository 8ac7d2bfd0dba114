"""The test support library: everything more than one test module uses lives here.

Test modules import from this package only, never from each other.

- ``services.py``: the real parts. A Tansu broker (Kafka API), Redis (the machine's
  server or one started here), a throwaway PostgreSQL database, a pub/sub
  subscriber, ``free_port``; and the pytest fixtures on them (``kafka``,
  ``private_kafka``, ``redis_url``, ``redis_client``, ``channel``, ``postgres_dsn``,
  ``ledger_dsn``), registered suite-wide by ``tests/conftest.py``.
- ``job.py``: ``tilepipe`` as users run it, in a subprocess (``tilepipe``,
  ``run_to_end``, ``Job`` with its metrics), the summary line's ``counts`` and
  ``key_of`` for producing records keyed by tile.
- ``events.py``: keyword-only event factories. ``tile_event``, ``feature_event``,
  ``telemetry_event`` (wire records; ``dumps``/``tile_record`` for their bytes) and
  ``state_event`` (an in-memory ``TileEvent`` for the stage tests), with the
  explicit clocks ``T0``/``W0`` and ``NOW_MS``.
- ``hostile.py``: the poison corpus and the ``event_like`` fuzzer, for the stage
  tests and the whole-job tests alike.
- ``fakes.py``: stand-ins for unit tests (the ingress producer, a DLQ partition,
  the ingress's test keys); integration tests use the real parts.
- ``ingress.py``: ``tilepipe ingress`` in a subprocess (``IngressProcess``).
- ``tileserver.py``: an HTTP tile server and a purgeable cache in a thread.
- ``observability.py``: what the dashboard and alert rules ask of Prometheus.
- ``ci.py``: under CI a skip fails the run unless marked ``optional``.

Everything but ``ci.py`` and the fixtures is plain Python, so ``bench/`` uses it too.
"""
