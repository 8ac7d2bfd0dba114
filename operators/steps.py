"""Stages 1-3 as Bytewax steps: ``validate`` and ``enrich``, each a thin ``@operator``.

The logic is in :mod:`operators.validate` and :mod:`operators.enrich`, which
import no Bytewax: the HTTP ingress runs the same ``validate_record`` (see
``docs/ARCHITECTURE.md``, "The stages of the dataflow") without loading the
dataflow runtime. Each step runs its stage over whole batches
(``flat_map_batch``) and splits the result into what goes on and the dead
letters, as one :class:`OksErrs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.enrich import EnrichConfig, expand_batch
from operators.validate import ValidationConfig, validate_batch
from tilepipe.records import DeadLetter, FanOutEvent, RawRecord, TileEvent

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class OksErrs(Generic[T]):
    """A stage's output as two streams: what goes on (``oks``) and its dead letters."""

    oks: Stream[T]
    errs: Stream[DeadLetter]


def _split(results: Stream[Any], is_ok: Callable[[Any], bool]) -> OksErrs[Any]:
    """Branch a stage's mixed results into an :class:`OksErrs`.

    Bytewax types both branches as the input's item type, which the predicate
    narrows; the steps declare the narrowed types, once, in their signatures."""
    branches = op.branch("split", results, is_ok)
    return OksErrs(branches.trues, branches.falses)


@operator
def validate(
    step_id: str, up: Stream[RawRecord], *, config: ValidationConfig
) -> OksErrs[TileEvent | FanOutEvent]:
    """Decode, verify and validate raw records, one batch at a time.

    ```python
    validated = validate("validate", raw, config=ValidationConfig())
    op.output("dlq", validated.errs, dead_letter_sink)
    ```

    :arg config: size limit, allowed clock skew and HMAC secrets.
    :returns: ``oks`` (:class:`TileEvent`, or :class:`FanOutEvent` for kinds that
        expand to tiles in the enrich stage) and ``errs`` (:class:`DeadLetter`).
    """
    max_age_s = None if config.signature_max_age_ms is None else config.signature_max_age_ms / 1000
    if config.hmac_secrets:
        log.info(
            "signature verification on: records need a valid x-tilepipe-signature",
            extra={"key_ids": sorted(config.hmac_secrets), "max_age_s": max_age_s},  # ids only
        )
    else:
        log.warning(
            "signature verification OFF: TILEPIPE_HMAC_SECRETS is unset, so records are not"
            " authenticated (set TILEPIPE_REQUIRE_SIGNATURES=true to refuse to start like this)"
        )
    results = op.flat_map_batch("check", up, lambda batch: validate_batch(batch, config))
    return _split(results, lambda r: not isinstance(r, DeadLetter))


@operator
def enrich(
    step_id: str, up: Stream[TileEvent | FanOutEvent], *, config: EnrichConfig
) -> OksErrs[TileEvent]:
    """Expand every event into the tile events it stands for.

    ```python
    expanded = enrich("enrich", validated.oks, config=EnrichConfig(feature_maxzoom=16))
    tiles, failed = expanded.oks, expanded.errs
    ```

    :arg config: zoom range defaults, tile budget, diff expiry, H3 settings.
    :returns: ``oks`` (one :class:`TileEvent` per tile) and ``errs`` (dead letters).
    """
    results = op.flat_map_batch("expand", up, lambda batch: expand_batch(batch, config))
    return _split(results, lambda r: isinstance(r, TileEvent))
