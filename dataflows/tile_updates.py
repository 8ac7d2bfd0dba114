"""The tile-update dataflow, wired top to bottom in the order of docs/ARCHITECTURE.md's stages.

``python -m bytewax.run "dataflows.tile_updates:flow()"`` runs it from the
``TILEPIPE_*`` environment; ``tilepipe run`` builds the same flow from flags.
All logic lives in ``operators/``, ``sources/`` and ``sinks/``.
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink

from dataflows.settings import Settings
from operators.apply import order_and_apply
from operators.enrich import EnrichConfig
from operators.steps import enrich, validate
from operators.tile_state import OrderConfig
from operators.validate import ValidationConfig
from sinks.file import FileDeadLetterSink, FileUpdatesSink
from sinks.kafka import KafkaDeadLetterSink
from sinks.redis import RedisBroadcastSink
from sinks.render_queue import RenderQueueSink, RenderQueueTarget
from sources.file import JsonlFileSource
from sources.generator import GeneratorSource, GeneratorSpec
from sources.kafka import KafkaTopicSource
from tilepipe.config import kafka_uri, redis_uri
from tilepipe.records import DeadLetter, RawRecord, TileUpdate
from tilepipe.store import RedisTarget


def build_flow(
    settings: Settings,
    *,
    source: Source[RawRecord] | None = None,
    sink: Sink[TileUpdate] | None = None,
    dlq: Sink[DeadLetter] | None = None,
) -> Dataflow:
    """The flow for ``settings``; ``source``, ``sink`` and ``dlq`` replace the ends the
    settings name (``bytewax.testing``'s in tests/unit/test_flow_in_process.py)."""
    flow = Dataflow("tile_updates")
    raw = op.input("source", flow, make_source(settings) if source is None else source)
    validated = validate("validate", raw, config=validation_config(settings))
    expanded = enrich("enrich", validated.oks, config=enrich_config(settings))
    dead = op.merge("dead", validated.errs, expanded.errs)
    op.output("dead_letters", dead, make_dlq(settings) if dlq is None else dlq)
    updates = order_and_apply("apply", expanded.oks, config=order_config(settings))
    if sink is not None:
        op.output("broadcast", updates, sink)
    elif settings.render_queue:  # render first; the render worker broadcasts after the commit
        op.output("render_queue", updates, make_render_queue(settings))
    else:
        op.output("broadcast", updates, make_sink(settings))
    return flow


def validation_config(s: Settings) -> ValidationConfig:
    return ValidationConfig(
        max_record_bytes=s.max_record_bytes,
        max_future_ms=s.max_future_ms,
        hmac_secrets=s.secrets_by_key(),
        signature_max_age_ms=int(s.signature_max_age.total_seconds() * 1000),
        geometry=s.geometry_rules(),
    )


def enrich_config(s: Settings) -> EnrichConfig:
    return EnrichConfig(
        feature_minzoom=s.feature_minzoom,
        feature_maxzoom=s.feature_maxzoom,
        max_tiles_per_event=s.max_tiles_per_event,
        cover_deadline_s=s.cover_deadline.total_seconds(),
        diff_expire=s.diff_expire,
        h3_resolution=s.h3_resolution,
        telemetry_zooms=tuple(s.telemetry_zooms),
    )


def order_config(s: Settings) -> OrderConfig:
    return OrderConfig(
        allowed_lateness_ms=int(s.allowed_lateness.total_seconds() * 1000),
        max_delay_ms=int(s.max_delay.total_seconds() * 1000),
        state_ttl_ms=int(s.state_ttl.total_seconds() * 1000),
        max_recent_ids=s.max_recent_ids,
        max_objects_per_tile=s.max_objects_per_tile,
    )


def make_source(s: Settings) -> Source[RawRecord]:
    scheme, _, rest = s.source.partition(":")
    if scheme == "file":
        return JsonlFileSource(rest, max_record_bytes=s.max_record_bytes)
    if scheme == "generator":
        return GeneratorSource(GeneratorSpec.from_query(rest.lstrip("?")))
    brokers, topic = kafka_uri(s.source)
    return KafkaTopicSource(
        brokers,
        topic,
        start=s.kafka_start,
        batch_size=s.kafka_batch_size,
        exit_at_end=s.kafka_exit_at_end,
        extra_config=s.kafka_config,
        lag_interval_s=s.kafka_lag_interval.total_seconds(),
    )


def make_sink(s: Settings) -> Sink[TileUpdate]:
    """The broadcast sink; an update it cannot write becomes a letter on the job's DLQ."""
    scheme, _, rest = s.sink.partition(":")
    if scheme == "file":
        return FileUpdatesSink(rest, make_dlq(s))
    ttl = s.tile_ttl
    target = RedisTarget.from_uri(
        s.sink,
        prefix=s.redis_prefix,
        mode=s.publish_mode,
        tile_ttl_s=0 if ttl is None else max(1, int(ttl.total_seconds())),
        ttl_minzoom=s.tile_ttl_minzoom,
    )
    return RedisBroadcastSink(target, dead_letters=make_dlq(s))


def make_render_queue(s: Settings) -> Sink[TileUpdate]:
    assert s.render_queue is not None
    url, options = redis_uri(s.render_queue)
    deadline = s.render_deadline
    return RenderQueueSink(
        RenderQueueTarget(
            url,
            prefix=options.get("prefix", s.redis_prefix),
            deadline_ms=None if deadline is None else int(deadline.total_seconds() * 1000),
        ),
        dead_letters=make_dlq(s),
    )


def make_dlq(s: Settings) -> DynamicSink[DeadLetter]:
    scheme, _, rest = s.dlq.partition(":")
    if scheme == "file":
        return FileDeadLetterSink(rest, s.dlq_raw_limit)
    brokers, topic = kafka_uri(s.dlq)
    return KafkaDeadLetterSink(brokers, topic, s.dlq_raw_limit, s.kafka_config)


def flow() -> Dataflow:
    """The flow from the ``TILEPIPE_*`` environment, for Bytewax's own runner:
    ``python -m bytewax.run "dataflows.tile_updates:flow()"``."""
    return build_flow(Settings())
