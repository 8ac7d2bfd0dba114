"""Graceful stop on SIGTERM / SIGINT.

Kubernetes sends SIGTERM before it kills a pod. Raising KeyboardInterrupt
inside Bytewax's callbacks aborts the worker mid-batch, so instead the signal
only sets a flag; every source checks it and ends its input. Bytewax then
drains what is in flight: held tile events are released, sinks flush, and
the last epoch's snapshot (offsets and state) is written before the process
exits. A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

requested = threading.Event()


def _handle(signum: int, _frame: FrameType | None) -> None:
    if requested.is_set():
        log.warning("second %s: exiting now without draining", signal.Signals(signum).name)
        os._exit(128 + signum)
    requested.set()
    log.info("%s received: draining in-flight batches, then exiting", signal.Signals(signum).name)


def install() -> None:
    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
