"""`regnas bench`: batch latency of one artifact in its runtime, here or on a device over TVM RPC.

When the artifact lies in a build directory (`BUILD/<target>/<file>`), the target's LUT
prediction for that member is reported beside the measurement.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regnas.builddir import REPORT, MemberRecord, is_build, read_report
from regnas.errors import RegnasError
from regnas.runtimes import Remote, load_runtime, runtime_for

logger = logging.getLogger(__name__)

MAX_INPUT_BYTES = 2**30
"""The largest input batch bench allocates (a 1×3×224×224 image is 0.6 MB): a model declares its input size, so it is bounded."""


@dataclass
class BenchResult:
    """Latency percentiles of one artifact (milliseconds)."""

    model: str
    runtime: str
    version: str
    threads: int
    batch: int
    input_shape: list[int]
    warmup: int
    repeats: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    remote: str | None = None
    emulated: str | None = None
    """Set when the device is emulated: the timings are the emulator's, not the device's."""
    predicted_latency_ms: float | None = None
    predicted_for: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _build_prediction(path: Path) -> tuple[float | None, str | None]:
    """The LUT prediction recorded for the member this artifact came from, if any."""
    if not is_build(path.parent.parent):
        return None, None
    report = read_report(path.parent.parent)
    members = [MemberRecord.from_json(m, str(path.parent.parent / REPORT)) for m in report["family"]]
    member = next((m for m in members if m.target == path.parent.name), None)
    target = next((t for t in report.get("targets", []) if t.get("name") == path.parent.name), None)
    if member is None or member.predicted_latency_ms is None or target is None:
        return None, None
    return member.predicted_latency_ms, f"{target['name']}: {target['runtime']} {target['precision']}, {target['threads']} threads"


def bench(
    model: Path,
    runtime: str | None = None,
    threads: int = 1,
    remote: Remote | None = None,
    batch: int = 1,
    input_shape: tuple[int, ...] | None = None,
    warmup: int = 20,
    repeats: int = 200,
) -> BenchResult:
    """Time `model` at `batch` after `warmup` runs; percentiles over `repeats` runs."""
    predicted, predicted_for = _build_prediction(Path(model).resolve())
    rt = load_runtime(runtime, model, threads, remote) if runtime else runtime_for(model, threads, remote)
    if batch > rt.max_batch:
        raise RegnasError(f"{model} runs at most batch {rt.max_batch} in {rt.name}; pass --batch {rt.max_batch}")
    shape = tuple(input_shape) if input_shape else rt.input_shape
    if any(d is None for d in shape):
        raise RegnasError(f"{model} has a dynamic input shape {shape}; pass --input-shape C,H,W")
    if input_shape and any(d is not None and d != g for d, g in zip(rt.input_shape, input_shape)):
        raise RegnasError(f"--input-shape {input_shape} does not match the model's {rt.input_shape}; fix --input-shape")
    size = 4 * batch * math.prod(shape)
    if size > MAX_INPUT_BYTES:
        raise RegnasError(
            f"{model}'s input {batch}x{'x'.join(map(str, shape))} takes {size / 2**30:,.1f} GiB, more than the "
            f"{MAX_INPUT_BYTES >> 30} GiB regnas bench allocates; bench a model with a smaller input or --batch"
        )
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    if rt.emulated:
        logger.warning(f"{model} runs on an emulated device ({rt.emulated}): its timings say nothing about the real device's latency")
    ms = rt.time_ms(x, warmup, repeats)
    return BenchResult(
        model=str(model),
        runtime=rt.name,
        version=rt.version(),
        threads=threads,
        batch=batch,
        input_shape=list(shape),
        warmup=warmup,
        repeats=repeats,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        remote=str(remote) if remote else None,
        emulated=rt.emulated,
        predicted_latency_ms=predicted,
        predicted_for=predicted_for,
    )
