"""Atomic file writes and hashing: a crash never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from regnas.errors import RegnasError


def _unwritable(path: Path, exc: OSError) -> RegnasError:
    return RegnasError(f"cannot write {path} ({exc.strerror or exc}); choose a writable location")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A location that cannot be written (read-only, a file where a folder should be, a folder where the
    file should be) is a one-line RegnasError.
    """
    path = Path(path)
    if path.is_dir():
        raise RegnasError(f"cannot write {path}: it is a directory; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _unwritable(path, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Prove, before any long work starts, that `path` is (or can become) a directory files can be written to.

    Nothing is left behind: a probe file is created and removed in `path`, or in its nearest existing
    parent when `path` does not exist yet.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RegnasError(f"{what} {path} is a file; pass a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RegnasError(f"{what} {path} cannot be created: {probe} is a file; pass another directory")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".regnas-probe-"):
            pass
    except OSError as exc:
        raise RegnasError(f"cannot write to {what} {path} ({exc.strerror or exc}); choose a writable location") from exc
    return path


def ensure_writable_file(path: str | os.PathLike | None, what: str = "output file") -> None:
    """Fail now, not after the work, when `path` (if given) cannot be written."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise RegnasError(f"{what} {path} is a directory; name a file")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), f"the folder of {what} {path}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or corrupt file into a one-line RegnasError."""
    path = Path(path)
    if not path.is_file():
        raise RegnasError(f"{what} not found: {path}; check the path")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegnasError(f"{what} {path} is not valid JSON ({exc}); regenerate it") from exc


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Load safetensors (never pickle); a missing or corrupt file is a RegnasError."""
    path = Path(path)
    if not path.is_file():
        raise RegnasError(f"{what} not found: {path}; check the path")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise RegnasError(f"{what} {path} is not a readable safetensors file ({exc}); re-create it") from exc


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes; of a directory (a Core ML package), of its relative paths and bytes."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """SHA-256 of a JSON-serialisable object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
