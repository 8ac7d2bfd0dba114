"""The exceptions tilepipe raises on purpose, under one root.

:class:`ConfigError` is the one for anything the user fixes before a command can run: a
setting, a missing file, a service that does not answer. The CLI prints its message as one
line after the command's name and exits 2, without a traceback, so the message says what to
fix (and never carries a secret). Bad *data* is never an exception that leaves a stage: it
becomes a dead letter with a reason code (:mod:`tilepipe.reasons`).
"""

from __future__ import annotations


class TilepipeError(Exception):
    """Root of tilepipe's own exceptions."""


class ConfigError(TilepipeError):
    """A configuration or environment problem the user can fix: one line, exit code 2."""
