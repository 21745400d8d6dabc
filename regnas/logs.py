"""Where progress goes: the `regnas` logger tree, one stderr handler, set up once by the entry point.

Library modules log through `logging.getLogger(__name__)` and never print progress; stdout stays
for results. A program that imports regnas without calling `configure` gets Python's defaults
(warnings only).
"""

from __future__ import annotations

import logging
import sys

LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"regnas: {level}{record.getMessage()}"


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record arrives (a redirected or replaced stderr included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(verbosity: int = 0) -> None:
    """Send regnas's log records to stderr as `regnas: <message>`; -1 quiet (warnings), 0 progress, 1 debug."""
    root = logging.getLogger("regnas")
    for h in list(root.handlers):
        if getattr(h, "_regnas", False):
            root.removeHandler(h)
    handler = _Stderr()
    handler.setFormatter(_Formatter())
    handler._regnas = True
    root.addHandler(handler)
    root.setLevel(LEVELS[max(-1, min(1, verbosity))])
    root.propagate = False  # some backends configure the root logger on import; regnas speaks once
