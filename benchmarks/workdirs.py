"""Where the benchmarks keep their builds: one folder per space, dataset and seed under `--work`, reused when present."""

from __future__ import annotations

import json
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
