"""What the benchmarks share: where they keep their builds (one folder per space, dataset and seed under `--work`,
reused when present), and the provenance every result JSON records."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from regnas.builddir import DATA_CACHE
from regnas.data import Dataset, load_recorded_split


def data_label(data: str) -> str:
    """A dataset's name in folder names and JSON rows: a named dataset as is, a path by its last component."""
    path = Path(data)
    return path.name if len(path.parts) > 1 or path.exists() else data


def work_dir(work: Path, space: str, data: str, seed: int = 0) -> Path:
    """`WORK/<space>-<data label>`, with `-seed<S>` for seeds other than 0."""
    return work / (f"{space}-{data_label(data)}" + (f"-seed{seed}" if seed else ""))


def build_split(work: Path, data: str) -> Dataset:
    """The data split the supernet in the build folder `work` was trained on (an image folder decoded into its cache)."""
    header = json.loads((work / "supernet.json").read_text())
    return load_recorded_split(data, header["split"], str(work / "supernet.json"), cache=work / DATA_CACHE)


SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
"""CPU features that move the numbers: training steps (AVX-512, bf16) and int8 (VNNI: without it ONNX Runtime's u8s8 saturates)."""


def cpu_features() -> dict:
    """The CPU's model name and which of SPEED_FLAGS it has (`regnas.targets.profile`, which reads them on Linux)."""
    from regnas.targets.profile import cpu_flags, cpu_model

    flags = cpu_flags()
    return {"cpu_model": cpu_model(), "cpu_flags": [f for f in SPEED_FLAGS if f in flags]}


def provenance() -> dict:
    """When, from which commit (and whether the working tree had uncommitted changes) and on what a result was measured."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "host": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            **cpu_features(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": gpu,
        },
    }
