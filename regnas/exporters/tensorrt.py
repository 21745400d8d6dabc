"""TensorRT: the engine (fp16, int8) where TensorRT and a GPU exist; everywhere, the TensorRT-ready ONNX.

The ready ONNX is what `trtexec` consumes: fp32 graph for `--fp16`, explicit symmetric QDQ
(s8 activations and weights, as TensorRT requires) for `--int8`. It is checked here with ONNX
Runtime; the engine is built and checked only on a machine with TensorRT and an NVIDIA GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from regnas.errors import RegnasError
from regnas.exporters import Exported, Exporter, ExportJob, register_exporter
from regnas.exporters.onnx import INPUT, OnnxExporter, preprocessed_compute_nodes, quantize_int8, scope_modules
from regnas.io import atomic_path
from regnas.runtimes.tensorrt import tensorrt_or_reason

MAX_BATCH = 256
TRT_INT8 = {"activation_type": "QInt8", "weight_type": "QInt8"}


def trtexec_command(onnx_path: Path, engine: Path, precision: str, input_shape: tuple[int, ...]) -> str:
    """The trtexec line that builds `engine` from the ready ONNX on a GPU machine."""
    dims = "x".join(map(str, input_shape))
    shapes = f"--minShapes={INPUT}:1x{dims} --optShapes={INPUT}:1x{dims} --maxShapes={INPUT}:{MAX_BATCH}x{dims}"
    return f"trtexec --onnx={onnx_path} --{precision} {shapes} --saveEngine={engine}"


def build_engine(onnx_path: Path, engine: Path, precision: str, input_shape: tuple[int, ...]) -> Path:
    """Build a serialized engine with the TensorRT builder (what trtexec does)."""
    trt, reason = tensorrt_or_reason()
    if trt is None:
        raise RegnasError(reason)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        raise RegnasError(f"TensorRT cannot parse {onnx_path.name}: {parser.get_error(0)}; report it with the arch")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (1, *input_shape), (1, *input_shape), (MAX_BATCH, *input_shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RegnasError(f"TensorRT could not build an engine from {onnx_path.name}; see its log above")
    with atomic_path(engine) as tmp:
        Path(tmp).write_bytes(bytes(plan))
    return engine


@register_exporter
class TensorRTExporter(Exporter):
    """`tensorrt-<p>.onnx` (ready for trtexec, checked with ONNX Runtime) and `tensorrt-<p>.engine`."""

    name = "tensorrt"
    precisions = ("fp16", "int8")
    extra = "onnx"

    def check_available(self) -> None:
        OnnxExporter().check_available()

    def export(self, job: ExportJob, precision: str, options: dict[str, Any] | None = None) -> list[Exported]:
        ready = job.directory / f"tensorrt-{precision}.onnx"
        engine = job.directory / f"tensorrt-{precision}.engine"
        opts = {**TRT_INT8, **(options or {})} if precision == "int8" else {}
        if precision == "fp16":
            with atomic_path(ready) as tmp:
                shutil.copyfile(job.onnx(), tmp)
        else:
            quantize_int8(job.onnx(), ready, job.calib, opts, symmetric=True)
        out = [Exported(self.name, precision, ready, "onnxruntime", options=opts)]
        command = trtexec_command(ready, engine, precision, job.input_shape)
        _, reason = tensorrt_or_reason()
        if reason is None:
            build_engine(ready, engine, precision, job.input_shape)
            out.append(Exported(self.name, precision, engine, "tensorrt", command=command, options=opts))
        else:
            out.append(Exported(self.name, precision, engine, "tensorrt", status=f"skipped: {reason}", command=command, options=opts))
        return out

    def float_candidates(self, job: ExportJob, precision: str) -> list[str]:
        return preprocessed_compute_nodes(job.onnx()) if precision == "int8" else []

    def unit_modules(self, job: ExportJob, units: list[str]) -> dict[str, str]:
        return scope_modules(job.model, units)

    def option_grid(self, precision: str) -> list[dict[str, Any]]:
        if precision != "int8":
            return [{}]
        methods = [{"calibrate_method": "Percentile"}, {"calibrate_method": "Entropy"}]
        return [{}, *methods, {"per_channel": False}, {"keep_float": ["first", "last"]}]
