"""ONNX: fp32 (checker-clean, dynamic batch), fp16 (float I/O), int8 (ONNX Runtime static QDQ).

int8 is calibrated on the calib split. Its options (calibration method, per-channel scales,
reduce_range, activation and weight types, nodes kept in float) form the grid that flip-aware
quantization searches; the default is ONNX Runtime's usual per-channel u8s8 MinMax, which
saturates on AVX2 CPUs without VNNI, exactly the regression the check exists to catch.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regnas.errors import RegnasError, require
from regnas.exporters import Exported, Exporter, ExportJob, quiet, register_exporter
from regnas.io import atomic_path

INPUT, OUTPUT = "input", "scores"
DEFAULT_INT8 = {
    "calibrate_method": "MinMax",
    "per_channel": True,
    "reduce_range": False,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
}


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, output: str = OUTPUT) -> Path:
    """Write `model` as fp32 ONNX with a dynamic batch dimension, checked by onnx.checker."""
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")
    x = torch.rand(2, *input_shape)
    with atomic_path(path) as tmp, quiet(), torch.no_grad():
        try:
            torch.onnx.export(
                model.eval(),
                (x,),
                str(tmp),
                dynamo=True,
                external_data=False,
                input_names=[INPUT],
                output_names=[output],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            )
        except Exception as exc:  # torch.export raises many types for unsupported graphs
            reason = str(exc).splitlines()[0]
            raise RegnasError(f"could not export {type(model).__name__} to ONNX ({reason}); report it with the arch") from exc
        onnx.checker.check_model(str(tmp))
    return path


def to_fp16(src: Path, path: Path) -> Path:
    """fp16 weights and arithmetic, float32 inputs and outputs."""
    onnx = require("onnx", "onnx")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


class _Calibration:
    """ONNX Runtime's calibration reader over an array of images, in equal batches (histogram calibrators need them)."""

    def __init__(self, images: np.ndarray, batch: int = 64):
        batch = min(batch, len(images))
        n = len(images) - len(images) % batch
        self._batches = iter([{INPUT: images[i : i + batch].astype(np.float32)} for i in range(0, n, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(src: Path, path: Path, calib: np.ndarray, options: dict[str, Any], symmetric: bool = False) -> Path:
    """Static QDQ int8 of the fp32 model at `src`, calibrated on `calib`."""
    q = require("onnxruntime.quantization", "onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    opts = {**DEFAULT_INT8, **options}
    with tempfile.TemporaryDirectory() as work, atomic_path(path) as tmp, quiet():
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        keep = _float_nodes(pre, opts.get("keep_float", ()))
        q.quantize_static(
            str(pre),
            str(tmp),
            _Calibration(calib),
            quant_format=q.QuantFormat.QDQ,
            per_channel=opts["per_channel"],
            reduce_range=opts["reduce_range"],
            activation_type=getattr(q.QuantType, opts["activation_type"]),
            weight_type=getattr(q.QuantType, opts["weight_type"]),
            calibrate_method=getattr(q.CalibrationMethod, opts["calibrate_method"]),
            nodes_to_exclude=keep,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
    return path


def _float_nodes(model_path: Path, where: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the first and/or last compute nodes (Conv/Gemm/MatMul), kept in float when asked."""
    onnx = require("onnx", "onnx")
    compute = [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    picks = {"first": compute[:1], "last": compute[-1:]}
    return [name for w in where for name in picks[w]]


@register_exporter
class OnnxExporter(Exporter):
    """`model-fp32.onnx`, `model-fp16.onnx`, `model-int8.onnx`, run by ONNX Runtime."""

    name = "onnx"
    precisions = ("fp32", "fp16", "int8")
    extra = "onnx"

    def check_available(self) -> None:
        for module in ("onnx", "onnxscript", "onnxruntime"):
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
        ]
