"""Where progress goes: the `regnas` logger tree, one stderr handler, set up once by the entry point.

Library modules log through `logging.getLogger(__name__)` and never print progress; stdout stays
for results. A program that imports regnas without calling `configure` gets Python's defaults
(warnings only).
"""

from __future__ import annotations

import logging
import sys
import time

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


class Stages:
    """A long command's stages, announced as they start: `stage k/n: name`, with the minutes its own time plan gives
    the stage and when the plan ends the command (a line per stage, so a CI log without a terminal reads it too). The
    plan is a budget: training may stop sooner, at its recipe's most epochs."""

    def __init__(self, names: list[str], logger: logging.Logger) -> None:
        self.names, self.logger, self.plan = names, logger, {}

    def planned(self, plan: dict[str, float]) -> None:
        """Seconds planned per stage (a plan key may name two stages joined by `_and_`, split evenly between them)."""
        self.plan = {}
        for key, seconds in plan.items():
            parts = [p for p in key.split("_and_") if p in self.names]
            self.plan |= {p: seconds / len(parts) for p in parts}

    def start(self, name: str) -> None:
        k = self.names.index(name)
        line = f"stage {k + 1}/{len(self.names)}: {name}"
        if name in self.plan:
            left = sum(self.plan.get(n, 0.0) for n in self.names[k:])
            finish = time.strftime("%H:%M", time.localtime(time.time() + left))
            line += f" ({self.plan[name] / 60:.1f} min in the plan, which ends the build by {finish}, {left / 60:.0f} min from now)"
        self.logger.info(line)
