"""Atomic file writes and hashing: a crash never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from regnas.errors import RegnasError


def cache_root() -> Path:
    """Where regnas keeps downloaded, rebuildable things: $REGNAS_CACHE, else $XDG_CACHE_HOME/regnas, else ~/.cache/regnas."""
    if os.environ.get("REGNAS_CACHE"):
        return Path(os.environ["REGNAS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "regnas"


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def full_disk(exc: OSError, path: str | os.PathLike | None = None) -> RegnasError:
    """The one-line error for a write that ran out of space (`path`: what was being written, else the error's file)."""
    where = Path(path or exc.filename or ".")
    folder = where if where.is_dir() else where.parent
    return RegnasError(f"no space left on the device writing {where}; free space in {folder} (or quota), then run the command again")


def _unwritable(path: Path, exc: OSError) -> RegnasError:
    if exc.errno in FULL_DISK:
        return full_disk(exc, path)
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
        try:
            yield Path(tmp)
        except OSError as exc:
            if exc.errno in FULL_DISK:
                raise full_disk(exc, path) from exc
            raise
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _unwritable(path, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def copy_into_place(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a file or a folder (a Core ML package, a member folder) onto `dst`: under a temporary name beside it,
    then renamed there, so `dst` is the old copy or the new one, never half of one."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, tmp)
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif src.is_dir() and (dst.is_symlink() or dst.exists()):
        dst.unlink()
    os.replace(tmp, dst)


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


MAX_JSON_BYTES = 256 * 2**20
"""The largest JSON file read (a build's report with every search candidate is a few MB): files are size-checked first."""


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing, oversized or corrupt file into a one-line RegnasError."""
    path = Path(path)
    if not path.is_file():
        raise RegnasError(f"{what} not found: {path}; check the path")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        limit = MAX_JSON_BYTES >> 20
        raise RegnasError(f"{what} {path} is {size / 2**20:,.0f} MiB, more than the {limit} MiB regnas reads; check the file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegnasError(f"{what} {path} is not valid JSON ({exc}); regenerate it") from exc


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(contiguous, str(tmp), metadata=metadata)
        except Exception as exc:  # safetensors' Rust I/O errors arrive as SafetensorError, their errno only in the text
            if "os error 28" in str(exc) or "os error 122" in str(exc):
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc
            raise


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


def tensors_sha256(path: str | os.PathLike, what: str = "weights") -> str:
    """SHA-256 of a safetensors file's tensors (names, dtypes, shapes and bytes, by name): what decides how a network
    computes. The file's own bytes are not canonical (its header's metadata comes out in another order per process)."""
    h = hashlib.sha256()
    tensors = load_tensors(path, what)
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """SHA-256 of a JSON-serialisable object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
