"""The Python API: what `regnas build`, `regnas check` and `regnas gate` do, as functions that return records.

    import regnas

    report = regnas.build(targets="phone,server", data="digits", out="build")
    print(report.member("server").top1, report.passed)
    again = regnas.build("build/build.toml", out="rebuild")   # the same family, from the settings the build wrote
    regnas.check("build").exit_code(strict=True)
    regnas.gate("deployed.onnx", "build/server", data="digits", split="test").passed

Options are the fields of `BuildOptions` (the flags of `regnas build` with `-` as `_`); bad input raises
`RegnasError` with the same one-line message the command line prints.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from regnas.builddir import BuildReport
from regnas.config import load_toml
from regnas.errors import RegnasError
from regnas.runtimes import Remote
from regnas.workflow.build import BuildOptions
from regnas.workflow.build import build as _build
from regnas.workflow.check import check_build
from regnas.workflow.gate import GateResult
from regnas.workflow.gate import gate as _gate


def options(config: BuildOptions | str | Path | None = None, **overrides: Any) -> BuildOptions:
    """Build settings: `config` (settings, or the path of a build.toml; default the defaults) with `overrides` set."""
    base = config if isinstance(config, BuildOptions) else load_toml(BuildOptions, config) if config is not None else BuildOptions()
    known = {f.name for f in fields(BuildOptions) if f.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise RegnasError(f"unknown build option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
    return replace(base, **overrides)


def build(config: BuildOptions | str | Path | None = None, **overrides: Any) -> BuildReport:
    """Build a family (`regnas build`): train or load the supernet, search, fine-tune, export and check; the report."""
    opts = options(config, **overrides)
    return BuildReport.from_json(opts.out, _build(opts))


def check(out: str | Path, rpc: str | None = None, rpc_key: str | None = None, export: bool = False) -> BuildReport:
    """Check a build's artifacts on its test split (`regnas check`; `export`: export them first, `regnas export`)."""
    return check_build(Path(out), Remote.from_options(rpc, rpc_key), export)


def gate(reference: str | Path, candidate: str | Path, data: str, **settings: Any) -> GateResult:
    """`regnas gate`: whether `candidate` keeps what `reference` gets right on `data` (settings as `regnas.workflow.gate.gate`)."""
    return _gate(reference, candidate, data, **settings)
