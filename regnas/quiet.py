"""Keep third-party chatter off the user's terminal: converters' prints, warnings, log lines, native stderr.

Exporters and runtimes wrap their calls into toolchains (torch.export, ONNX Runtime, coremltools,
TVM, ExecuTorch's C++ runtime) in `quiet()`. Errors still propagate; regnas's own progress goes
through logging outside these blocks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

_LOGGERS = ("torch", "torch.onnx", "torchao", "coremltools", "onnxruntime", "executorch", "root")


@contextlib.contextmanager
def _native_streams() -> Iterator[None]:
    """Point file descriptors 1 and 2 at /dev/null, for C++ libraries that print directly to them."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


@contextlib.contextmanager
def quiet(native: bool = False) -> Iterator[None]:
    """Silence Python-level prints, warnings and log lines; with `native`, also what C++ code writes to stdout/stderr."""
    levels = {n: logging.getLogger(n).level for n in _LOGGERS}
    for n in levels:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            if native:
                stack.enter_context(_native_streams())
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
