"""ExecuTorch with the XNNPACK delegate: `.pte` programs for Android phones, fp32 and int8, batch 1.

int8 is PT2E static quantization with XNNPACK's quantizer, calibrated on the calib split.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from regnas.data import to_float
from regnas.errors import LoweringFailed, RegnasError, require
from regnas.exporters import Exported, Exporter, ExportJob, register_exporter
from regnas.io import atomic_path
from regnas.quiet import quiet

DEFAULT_INT8 = {"per_channel": True, "calib_samples": 512}


def _lowering_config():
    """ExecuTorch's edge settings without its IR validity check, which re-verifies every node after each pass: on a
    digits resnet member the int8 lowering took 14.5 s instead of 21.8 s, to the same bytes (executorch 1.5)."""
    from executorch.exir import EdgeCompileConfig

    return EdgeCompileConfig(_check_ir_validity=False)


def _export(model: torch.nn.Module, input_shape: tuple[int, ...], batch: int | None = 1) -> torch.export.ExportedProgram:
    """Batch 1 for the program, as phones run it (XNNPACK's memory plan is static); dynamic for calibration."""
    if batch is None:
        dim = torch.export.Dim("batch", min=1, max=4096)
        return torch.export.export(model, (torch.rand(2, *input_shape),), dynamic_shapes=({0: dim},))
    return torch.export.export(model, (torch.rand(batch, *input_shape),))


def compute_modules(model: torch.nn.Module) -> list[str]:
    """Linear layers, and each module holding convolutions (a conv with its batch norm and activation, which
    XNNPACK's quantizer annotates as one pattern)."""
    return [
        name
        for name, m in model.named_modules()
        if name and (isinstance(m, torch.nn.Linear) or any(isinstance(c, torch.nn.Conv2d) for c in m.children()))
    ]


def unit_owners(job: ExportJob) -> dict[str, str]:
    """The unit each operator of the traced model belongs to, by node name: what int8 may keep in float.

    An operator inside a compute module (`compute_modules`) belongs to the innermost one; any other to the
    innermost module it runs in (a residual block's add and activation, a head's pooling), or, run by the
    model itself, to the unit before it (the first unit, before any). Every operator has a unit, so with
    every unit kept in float the int8 program is the fp32 one: residual adds left outside the units stayed
    quantized and, on a Fashion-MNIST resnet, alone flipped 7 of 5,000 val images.
    """
    compute = set(compute_modules(job.model))
    owners: dict[str, str | None] = {}
    last = None
    for node in _calibration_graph(job).graph.nodes:
        if node.op == "call_function":
            stack = [name for name, _ in (node.meta.get("nn_module_stack") or {}).values() if name]
            inner = [name for name in stack if name in compute]
            last = inner[-1] if inner else stack[-1] if stack else last
            owners[node.name] = last
    first = next((unit for unit in owners.values() if unit), None)
    return {node: unit or first for node, unit in owners.items() if unit or first}


def _calibration_graph(job: ExportJob) -> torch.fx.GraphModule:
    """The job's model traced once for every quantization trial, with a dynamic batch for calibration."""
    if "calibration_graph" not in job.traced:
        job.traced["calibration_graph"] = _export(job.model.eval(), job.input_shape, batch=None).module()
    return job.traced["calibration_graph"]


def _quantize(job: ExportJob, options: dict[str, Any]) -> torch.nn.Module:
    """The job's model quantized by PT2E with XNNPACK's quantizer, calibrated on the job's images."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=options["per_channel"])
    quantizer = XNNPACKQuantizer()
    calib = job.calib
    owners = unit_owners(job)
    units = list(dict.fromkeys(owners.values()))
    named = [*options.get("keep_float", ()), *options.get("quantize_only", ())]
    if unknown := [n for n in named if n not in units]:
        raise RegnasError(f"keep_float names {unknown[0]!r}, no unit of the model; use one of {units[:3]}...")
    quantizer.set_global(config)
    # The quantizer's filter decides which nodes its global config annotates. Weights are get_attr nodes
    # without a module stack, so only operator nodes are judged, by the unit they belong to (this is also
    # why XNNPACKQuantizer.set_module_name does not reach convolutions here). Nodes are matched by name:
    # prepare_pt2e annotates a copy of the traced graph.
    if "quantize_only" in options:
        inside = set(options["quantize_only"])
        quantizer.set_filter_function(lambda node: node.op != "call_function" or owners.get(node.name) in inside)
    elif options.get("keep_float"):
        kept = set(options["keep_float"])
        quantizer.set_filter_function(lambda node: node.op != "call_function" or owners.get(node.name) not in kept)
    prepared = prepare_pt2e(copy.deepcopy(_calibration_graph(job)), quantizer)
    for i in range(0, min(len(calib), options["calib_samples"]), 64):
        prepared(torch.from_numpy(to_float(calib[i : i + 64])))
    return convert_pt2e(prepared)


@register_exporter
class ExecuTorchExporter(Exporter):
    """`executorch-fp32.pte`, `executorch-int8.pte`, lowered to XNNPACK."""

    name = "executorch"
    precisions = ("fp32", "int8")
    extra = "executorch"

    def check_available(self) -> None:
        with quiet(native=True):  # importing it loads torchao, which reports missing CUDA kernels
            require("executorch.exir", self.extra)

    def export(self, job: ExportJob, precision: str, options: dict[str, Any] | None = None) -> list[Exported]:
        self.check_available()
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        opts = {**DEFAULT_INT8, **(options or {})} if precision == "int8" else {}
        path = job.directory / f"executorch-{precision}.pte"
        with quiet(native=True), torch.no_grad():
            try:
                model = job.model.eval()
                if precision == "int8":
                    model = _quantize(job, opts)
                program = to_edge_transform_and_lower(
                    _export(model, job.input_shape), partitioner=[XnnpackPartitioner()], compile_config=_lowering_config()
                ).to_executorch()
            except Exception as exc:  # torch.export / exir raise many types for unsupported graphs
                reason = str(exc).splitlines()[0]
                raise LoweringFailed(f"could not lower the model to ExecuTorch ({reason}); report it with the arch") from exc
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(program.buffer)
        return [Exported(self.name, precision, path, "executorch", options=opts)]

    def float_candidates(self, job: ExportJob, precision: str) -> list[str]:
        return list(dict.fromkeys(unit_owners(job).values())) if precision == "int8" else []

    def unit_modules(self, job: ExportJob, units: list[str]) -> dict[str, str]:
        """Its units are the modules themselves."""
        modules = dict(job.model.named_modules())
        return {u: u for u in units if u in modules}

    def option_grid(self, precision: str) -> list[dict[str, Any]]:
        if precision != "int8":
            return [{}]
        return [{}, {"per_channel": False}, {"calib_samples": 2000}]
