"""ONNX: fp32 (checker-clean, dynamic batch), fp16 (float I/O), int8 (ONNX Runtime static QDQ).

int8 is calibrated on the calib split. Its options (calibration method, per-channel scales,
reduce_range, activation and weight types, nodes kept in float) form the grid that flip-aware
quantization searches; the default is ONNX Runtime's usual per-channel u8s8 MinMax, which
saturates on AVX2 CPUs without VNNI, exactly the regression the check exists to catch.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regnas.data import to_float
from regnas.errors import RegnasError, require
from regnas.exporters import Exported, Exporter, ExportJob, register_exporter
from regnas.io import atomic_path, sha256_file
from regnas.quiet import quiet

INPUT, OUTPUT = "input", "scores"
OPSET = 18
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
CALIB_BATCH = 64
DEFAULT_INT8 = {
    "calibrate_method": "MinMax",
    "per_channel": True,
    "reduce_range": False,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "calib_samples": 512,
}


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, output: str = OUTPUT) -> Path:
    """Write `model` as fp32 ONNX (opset OPSET) with a dynamic batch dimension, checked by onnx.checker.

    Traced with the TorchScript exporter: these networks have no data-dependent control flow, and it
    takes 0.2 s where the dynamo exporter takes 4-6 s per network (measured on a digits subnet, 2 cores),
    which every build, LUT profile and flip-aware quantization pays several times.
    """
    onnx = require("onnx", "onnx")
    x = torch.rand(2, *input_shape)
    with atomic_path(path) as tmp, quiet(), torch.no_grad():
        try:
            torch.onnx.export(
                model.eval(),
                (x,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=[output],
                dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}},
            )
        except Exception as exc:  # the exporter raises many types for unsupported graphs
            reason = str(exc).splitlines()[0]
            raise RegnasError(f"could not export {type(model).__name__} to ONNX ({reason}); report it with the arch") from exc
        onnx.checker.check_model(str(tmp))
    return path


def topological_sort(graph) -> None:
    """Reorder `graph.node` so every node comes after the producers of its inputs (the ONNX rule).

    ONNX Runtime's fp16 conversion appends the input Cast after its consumers; runtimes that
    execute in file order (TensorRT's parser) and `onnx.checker` reject that.
    """
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise RegnasError(f"ONNX graph {graph.name!r} has a cycle or an undefined input at node {pending[0].name!r}; report it")
        for n in progress:
            ordered.append(n)
            ready.update(n.output)
        pending = [n for n in pending if all(n is not m for m in progress)]
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(src: Path, path: Path) -> Path:
    """fp16 weights and arithmetic, float32 inputs and outputs; checker-clean."""
    onnx = require("onnx", "onnx")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    topological_sort(model.graph)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


class _Calibration:
    """ONNX Runtime's calibration reader over an array of images, in equal batches (histogram calibrators need them)."""

    def __init__(self, images: np.ndarray, batch: int = CALIB_BATCH):
        batch = min(batch, len(images))
        n = len(images) - len(images) % batch
        self._batches = ({INPUT: to_float(images[i : i + batch])} for i in range(0, n, batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(src: Path, path: Path, calib: np.ndarray, options: dict[str, Any], symmetric: bool = False) -> Path:
    """Static QDQ int8 of the fp32 model at `src`, calibrated on `calib`.

    Flip-aware quantization quantizes one graph dozens of times with different nodes kept in float;
    the pre-processed graph and (where ONNX Runtime can reuse them) the calibration ranges are kept
    beside `src`, keyed by its hash, the method and the images, so each trial only inserts QDQ nodes.
    """
    q = require("onnxruntime.quantization", "onnx")

    opts = {**DEFAULT_INT8, **options}
    if len(calib) < CALIB_BATCH:
        raise RegnasError(
            f"int8 calibration needs at least one batch of {CALIB_BATCH} images but the calib split has {len(calib)}; add data"
        )
    images = calib[: opts["calib_samples"]]
    pre = _preprocessed(src)
    keep = _float_nodes(pre, opts.get("keep_float", ()))
    only = _float_nodes(pre, opts["quantize_only"]) if "quantize_only" in opts else None
    cache = {}
    if "calibration_cache_path" in inspect.signature(q.quantize_static).parameters:
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
        cache["calibration_cache_path"] = pre.with_name(f"{pre.stem}.{opts['calibrate_method']}-{digest}.calib.json")
    with atomic_path(path) as tmp, quiet():
        q.quantize_static(
            str(pre),
            str(tmp),
            _Calibration(images),
            quant_format=q.QuantFormat.QDQ,
            per_channel=opts["per_channel"],
            reduce_range=opts["reduce_range"],
            activation_type=getattr(q.QuantType, opts["activation_type"]),
            weight_type=getattr(q.QuantType, opts["weight_type"]),
            calibrate_method=getattr(q.CalibrationMethod, opts["calibrate_method"]),
            nodes_to_exclude=keep,
            nodes_to_quantize=only,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            **cache,
        )
    return path


def _preprocessed(src: Path) -> Path:
    """ONNX Runtime's quantization pre-processing of `src` (shape inference, graph optimisation), made once per graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = src.with_name(f"{src.stem}.{sha256_file(src)[:16]}.pre.onnx")
    if not pre.is_file():
        with atomic_path(pre) as tmp, quiet():
            quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)
    return pre


def compute_nodes(model_path: Path) -> list[str]:
    """Names of the nodes with weights (Conv, Gemm, MatMul) in graph order: the units int8 may keep in float."""
    return list(unit_groups(model_path))


def unit_groups(model_path: Path) -> dict[str, list[str]]:
    """Each compute node with the nodes after it in graph order up to the next one (its activation, residual
    add, squeeze-excite gates; nodes before the first go with the first): what keeping that unit in float excludes.

    Keeping only the compute node float while its activation stays quantized does not help: its output is
    then quantized over the full range, without the activation's, and flips more (measured on Fashion-MNIST).
    """
    onnx = require("onnx", "onnx")
    groups: dict[str, list[str]] = {}
    lead: list[str] = []
    for node in onnx.load(str(model_path)).graph.node:
        if node.op_type in COMPUTE_OPS:
            groups[node.name] = [*lead, node.name]
            lead = []
        elif groups:
            groups[next(reversed(groups))].append(node.name)
        else:
            lead.append(node.name)
    return groups


def _float_nodes(model_path: Path, names: tuple[str, ...] | list[str]) -> list[str]:
    """The graph nodes of the named units; `first` and `last` name the first and last compute node's unit."""
    groups = unit_groups(model_path)
    compute = list(groups)
    picks = {"first": compute[:1], "last": compute[-1:]}
    unknown = [n for n in names if n not in picks and n not in groups]
    if unknown:
        raise RegnasError(
            f"keep_float names {unknown[0]!r}, which is no compute node of the graph; use first, last or one of {compute[:3]}..."
        )
    return [node for n in names for unit in picks.get(n, [n]) for node in groups[unit]]


def scope_modules(model: nn.Module, nodes: list[str]) -> dict[str, str]:
    """The module each compute node was traced from: the exporter names a node by its module scope
    (`/stages.0.0/shortcut/conv/Conv` is `stages.0.0.shortcut.conv`'s convolution)."""
    modules = dict(model.named_modules())
    scopes = {n: ".".join(n.strip("/").split("/")[:-1]) for n in nodes}
    return {n: s for n, s in scopes.items() if s in modules}


def preprocessed_compute_nodes(src: Path) -> list[str]:
    """The compute nodes of `src` as ONNX Runtime's quantizer names them (after its pre-processing)."""
    require("onnxruntime.quantization", "onnx")
    return compute_nodes(_preprocessed(src))


@register_exporter
class OnnxExporter(Exporter):
    """`model-fp32.onnx`, `model-fp16.onnx`, `model-int8.onnx`, run by ONNX Runtime."""

    name = "onnx"
    precisions = ("fp32", "fp16", "int8")
    extra = "onnx"

    def check_available(self) -> None:
        for module in ("onnx", "onnxruntime"):
            require(module, self.extra)

    def export(self, job: ExportJob, precision: str, options: dict[str, Any] | None = None) -> list[Exported]:
        path = job.directory / f"onnx-{precision}.onnx"
        if precision == "fp32":
            with atomic_path(path) as tmp:
                shutil.copyfile(job.onnx(), tmp)
        elif precision == "fp16":
            to_fp16(job.onnx(), path)
        else:
            quantize_int8(job.onnx(), path, job.calib, options or {})
        opts = {**DEFAULT_INT8, **(options or {})} if precision == "int8" else {}
        return [Exported(self.name, precision, path, "onnxruntime", options=opts)]

    def float_candidates(self, job: ExportJob, precision: str) -> list[str]:
        return preprocessed_compute_nodes(job.onnx()) if precision == "int8" else []

    def unit_modules(self, job: ExportJob, units: list[str]) -> dict[str, str]:
        return scope_modules(job.model, units)

    def option_grid(self, precision: str) -> list[dict[str, Any]]:
        if precision != "int8":
            return [{}]
        return [
            {},
            {"reduce_range": True},
            {"activation_type": "QUInt8", "weight_type": "QUInt8"},
            {"per_channel": False},
            {"reduce_range": True, "calibrate_method": "Percentile"},
            {"reduce_range": True, "calibrate_method": "Entropy"},
            {"reduce_range": True, "keep_float": ["first", "last"]},
            {"activation_type": "QUInt8", "weight_type": "QUInt8", "keep_float": ["first", "last"]},
            {"reduce_range": True, "calib_samples": 2000},
        ]
