"""ExecuTorch with the XNNPACK delegate: `.pte` programs for Android phones, fp32 and int8, batch 1.

int8 is PT2E static quantization with XNNPACK's quantizer, calibrated on the calib split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from regnas.errors import RegnasError, require
from regnas.exporters import Exported, Exporter, ExportJob, quiet, register_exporter
from regnas.io import atomic_path

DEFAULT_INT8 = {"per_channel": True, "calib_samples": 512}


def _export(model: torch.nn.Module, input_shape: tuple[int, ...], batch: int | None = 1) -> torch.export.ExportedProgram:
    """Batch 1 for the program, as phones run it (XNNPACK's memory plan is static); dynamic for calibration."""
    if batch is None:
        dim = torch.export.Dim("batch", min=1, max=4096)
        return torch.export.export(model, (torch.rand(2, *input_shape),), dynamic_shapes=({0: dim},))
    return torch.export.export(model, (torch.rand(batch, *input_shape),))


def _quantize(model: torch.nn.Module, input_shape: tuple[int, ...], calib: np.ndarray, options: dict[str, Any]) -> torch.nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=options["per_channel"]))
    prepared = prepare_pt2e(_export(model, input_shape, batch=None).module(), quantizer)
    for i in range(0, min(len(calib), options["calib_samples"]), 64):
        prepared(torch.from_numpy(np.ascontiguousarray(calib[i : i + 64], dtype=np.float32)))
    return convert_pt2e(prepared)


@register_exporter
class ExecuTorchExporter(Exporter):
    """`executorch-fp32.pte`, `executorch-int8.pte`, lowered to XNNPACK."""

    name = "executorch"
    precisions = ("fp32", "int8")
    extra = "executorch"

    def check_available(self) -> None:
        require("executorch.exir", self.extra)

    def export(self, job: ExportJob, precision: str, options: dict[str, Any] | None = None) -> list[Exported]:
        self.check_available()
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        opts = {**DEFAULT_INT8, **(options or {})} if precision == "int8" else {}
        path = job.directory / f"executorch-{precision}.pte"
        with quiet(), torch.no_grad():
            try:
                model = job.model.eval()
                if precision == "int8":
                    model = _quantize(model, job.input_shape, job.calib, opts)
                program = to_edge_transform_and_lower(_export(model, job.input_shape), partitioner=[XnnpackPartitioner()]).to_executorch()
            except Exception as exc:  # torch.export / exir raise many types for unsupported graphs
                raise RegnasError(f"could not lower the model to ExecuTorch ({str(exc).splitlines()[0]}); report it with the arch") from exc
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(program.buffer)
        return [Exported(self.name, precision, path, "executorch", options=opts)]

    def option_grid(self, precision: str) -> list[dict[str, Any]]:
        if precision != "int8":
            return [{}]
        return [{}, {"per_channel": False}, {"calib_samples": 2000}]
