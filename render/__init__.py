"""Render jobs: heavy tile work done asynchronously, idempotently, committed atomically.

A render trigger (one :class:`tilepipe.records.TileUpdate`) becomes a
:class:`~render.jobs.RenderJob` keyed by ``hash(tms, z, x, y, version)``; it
travels through a Redis Streams queue (:mod:`render.queue`), its life is
recorded in a PostgreSQL ledger (:mod:`render.ledger`), and a pool of workers
(:mod:`render.worker`) renders it (:mod:`render.renderers`) and commits it to a
tile store in two phases (:mod:`render.stores`).
"""
