"""Core ML: mlprogram `.mlpackage` for iOS, fp16 and int8 weights (fp16 compute).

Converting works on Linux; predicting needs macOS, so the check reports these as skipped here.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from regnas.errors import RegnasError, require
from regnas.exporters import Exported, Exporter, ExportJob, register_exporter, replace_dir
from regnas.exporters.onnx import INPUT, OUTPUT
from regnas.quiet import quiet


def deterministic_manifest(package: Path) -> None:
    """Replace the random item identifiers coremltools writes into `Manifest.json` with ones derived from the item paths.

    The identifiers only link the manifest's entries to its root model, so any unique strings work;
    derived ones make two exports of the same model byte-identical.
    """
    manifest = package / "Manifest.json"
    meta = json.loads(manifest.read_text())
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, "regnas:" + item["path"])) for old, item in meta["itemInfoEntries"].items()}
    meta["itemInfoEntries"] = {ids[old]: item for old, item in sorted(meta["itemInfoEntries"].items(), key=lambda kv: kv[1]["path"])}
    meta["rootModelIdentifier"] = ids[meta["rootModelIdentifier"]]
    manifest.write_text(json.dumps(meta, indent=4))


@register_exporter
class CoreMLExporter(Exporter):
    """`coreml-fp16.mlpackage`, `coreml-int8.mlpackage` (linear symmetric int8 weights)."""

    name = "coreml"
    precisions = ("fp16", "int8")
    extra = "coreml"

    def check_available(self) -> None:
        with quiet():
            require("coremltools", self.extra)

    def export(self, job: ExportJob, precision: str, options: dict[str, Any] | None = None) -> list[Exported]:
        with quiet():
            ct = require("coremltools", self.extra)
            import coremltools.optimize.coreml as cto

            shape = (ct.RangeDim(1, 4096, 1), *job.input_shape)
            try:
                with torch.no_grad():
                    traced = torch.jit.trace(job.model.eval(), torch.rand(1, *job.input_shape))
                model = ct.convert(
                    traced,
                    inputs=[ct.TensorType(name=INPUT, shape=shape)],
                    outputs=[ct.TensorType(name=OUTPUT)],
                    convert_to="mlprogram",
                    compute_precision=ct.precision.FLOAT16,
                    minimum_deployment_target=ct.target.iOS16,
                )
                if precision == "int8":
                    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))
                    model = cto.linear_quantize_weights(model, config=config)
            except Exception as exc:  # coremltools raises many types for unsupported ops
                raise RegnasError(f"could not convert the model to Core ML ({str(exc).splitlines()[0]}); report it with the arch") from exc
            path = job.directory / f"coreml-{precision}.mlpackage"
            with tempfile.TemporaryDirectory(dir=job.directory) as work:
                tmp = Path(work) / path.name
                model.save(str(tmp))
                deterministic_manifest(tmp)
                replace_dir(tmp, path)
        return [Exported(self.name, precision, path, "coreml")]
