"""Image folders as users have them: any size, mode and format in, one uint8 array per split out.

A folder holds one subfolder per class. Its images are decoded once, in parallel threads (Pillow
releases the GIL while it decodes and resizes), into a cache entry: one raw uint8 N×C×H×W file per
split, memory-mapped, so memory is bounded by the batch rather than the data set. An entry is keyed
on the file list (relative path, size, mtime), the decoding settings and the split, written under a
temporary name and renamed when complete, and found again by the next command that asks for the
same data. `--image-size N` resizes each image's shorter side to N, then centre-crops it to N×N;
without it, images of different sizes are refused in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from regnas.errors import RegnasError
from regnas.io import cache_root, read_json, write_json

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
MAX_IMAGE_PIXELS = 89_478_485
"""The largest image (in pixels) decoded, Pillow's own decompression-bomb bound: a 30000×30000 PNG header is refused
before any pixel is allocated."""
MAX_IMAGE_SIZE = 4096
"""The largest `--image-size`: a 4096-px colour image already takes 48 MiB per sample."""
CACHE_FORMAT = "regnas-images/1"
KEEP_ENTRIES = 2
"""Cache entries kept per cache folder (the newest); older ones are deleted when a new one is written."""
CHUNK = 256
"""Images per decoding task."""
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass(frozen=True)
class Folder:
    """An image folder's files and labels, in a fixed order (class folders, then file names, sorted)."""

    root: Path
    files: list[Path]
    labels: np.ndarray
    class_names: list[str]

    def fingerprint(self) -> str:
        """SHA-256 of every file's relative path, size and modification time: what the cache is keyed on."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(f"{f.relative_to(self.root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def display_name(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (kept by Python as surrogates) become U+FFFD, so reports can show it."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def scan_folder(root: Path) -> Folder:
    """The images under `root`'s class subfolders; a folder without classes or a class without images is bad input."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise RegnasError(f"{root}: an image folder needs one subfolder per class; found none")
    files: list[Path] = []
    labels: list[int] = []
    for label, d in enumerate(class_dirs):
        found = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not found:
            raise RegnasError(f"{d} has no images (class {display_name(d.name)!r}); add images to it or remove the folder")
        files += found
        labels += [label] * len(found)
    return Folder(root, files, np.asarray(labels, dtype=np.int64), [display_name(d.name) for d in class_dirs])


def _open(path: Path):
    """The image at `path`, header read only; a bomb, an unreadable or a corrupt file is one line naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise RegnasError(f"{path} declares more than {MAX_IMAGE_PIXELS:,} pixels ({exc}); downscale or remove it") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RegnasError(f"{path} is not a readable image ({exc}); remove or replace it") from exc
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise RegnasError(f"{path} is {w}x{h} px, more than the {MAX_IMAGE_PIXELS:,} pixels regnas decodes; downscale or remove it")
    return im


def _header(path: Path) -> tuple[tuple[int, int], bool]:
    """(width, height) and whether the image has colour, from its header."""
    with _open(path) as im:
        return im.size, im.mode not in GRAY_MODES


def _as_uint8(im, colour: bool) -> np.ndarray:
    """Pixels as uint8 H×W×C: 16-bit and 32-bit integer images scaled by their type's range, floats from [0, 1]."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.int64)
        top = 65535 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else 2**31 - 1
        if a.min(initial=0) < 0:
            raise RegnasError(f"{im.filename} has negative pixel values; save it as 8- or 16-bit unsigned")
        im = Image.fromarray(np.rint(a * (255 / top)).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not (np.isfinite(a).all() and a.min(initial=0) >= 0 and a.max(initial=0) <= 1):
            raise RegnasError(f"{im.filename} is a floating-point image outside [0, 1]; save it as 8- or 16-bit")
        im = Image.fromarray(np.rint(a * 255).astype(np.uint8), "L")
    out = np.asarray(im.convert("RGB" if colour else "L"), dtype=np.uint8)
    return out if out.ndim == 3 else out[:, :, None]


def decode(path: Path, colour: bool, size: int | None) -> np.ndarray:
    """One image as uint8 H×W×C (C = 3 if `colour` else 1), EXIF orientation applied; with `size`, its shorter side
    resized to `size` and centre-cropped to size×size."""
    from PIL import Image, ImageOps

    im = _open(path)
    try:
        if size is not None and im.format == "JPEG":
            im.draft("RGB" if colour else "L", (size, size))  # decode at a reduced scale where the JPEG allows it
        im = ImageOps.exif_transpose(im)
        px = _as_uint8(im, colour)
    except RegnasError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RegnasError(f"{path} is not a readable image ({exc}); remove or replace it") from exc
    finally:
        im.close()
    if size is None:
        return px
    h, w = px.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    im = Image.fromarray(px[:, :, 0] if px.shape[2] == 1 else px)
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    top, left = (nh - size) // 2, (nw - size) // 2
    out = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return out if out.ndim == 3 else out[:, :, None]


@dataclass(frozen=True)
class Layout:
    """What every decoded image becomes: C×H×W."""

    channels: int
    height: int
    width: int

    @property
    def bytes(self) -> int:
        return self.channels * self.height * self.width


def _in_threads(fn, items: list, desc: str) -> list:
    """`fn` over chunks of `items` on every core, with a progress bar; results in order."""
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        bar = tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)
        out = []
        for chunk, result in zip(chunks, pool.map(fn, chunks)):
            out.append(result)
            bar.update(len(chunk))
        bar.close()
    return [r for chunk in out for r in chunk]


def layout_of(folder: Folder, size: int | None) -> Layout:
    """The decoded shape: colour if any image has colour; `size`×`size`, or the one size every image has."""
    headers = _in_threads(lambda files: [_header(f) for f in files], folder.files, "reading image headers")
    colour = any(c for _, c in headers)
    if size is None:
        sizes = sorted({s for s, _ in headers})
        if len(sizes) > 1:
            (w0, h0), (w1, h1) = sizes[0], sizes[-1]
            raise RegnasError(
                f"{folder.root}: images have different sizes ({w0}x{h0} to {w1}x{h1}); pass --image-size N to resize "
                "them (shorter side to N, then a centre crop)"
            )
        w, h = sizes[0]
        return Layout(3 if colour else 1, h, w)
    return Layout(3 if colour else 1, size, size)


def check_image_size(size: int | None) -> None:
    """Refuse an `--image-size` outside what a classifier can use, before anything is read."""
    if size is not None and not 4 <= size <= MAX_IMAGE_SIZE:
        raise RegnasError(f"--image-size {size} is outside 4 to {MAX_IMAGE_SIZE} px; pass a size in that range")


def cache_dir(base: Path | None) -> Path:
    """Where decoded images are cached: `base` (a build's or training run's own `data/` folder), else the user cache."""
    return base if base is not None else cache_root() / "images"


def _entry_key(folder: Folder, size: int | None, split_key: str) -> str:
    return hashlib.sha256(json.dumps([CACHE_FORMAT, folder.fingerprint(), size, split_key]).encode()).hexdigest()[:24]


def _open_entry(entry: Path, splits: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The split arrays of a complete cache entry (memory-mapped, copy-on-write), or None when it is absent or stale."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path, "image cache index")
        shape = tuple(meta["shape"])
        out = {}
        for name, idx in splits.items():
            file = entry / f"{name}.u8"
            if file.stat().st_size != len(idx) * int(np.prod(shape)):
                return None
            out[name] = np.memmap(file, np.uint8, "c", shape=(len(idx), *shape)) if len(idx) else np.zeros((0, *shape), np.uint8)
        return out
    except (RegnasError, OSError, KeyError, TypeError, ValueError):
        return None


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def load_folder(
    folder: Folder, splits: dict[str, np.ndarray], split_key: str, size: int | None, cache: Path | None
) -> dict[str, np.ndarray]:
    """Each split's images as a memory-mapped uint8 N×C×H×W array, decoded into the cache unless an entry holds them.

    `splits` maps split names to indices into `folder.files`; `split_key` identifies that split (seed, fractions).
    """
    base = cache_dir(cache)
    entry = base / f"images-{_entry_key(folder, size, split_key)}"
    found = _open_entry(entry, splits)
    if found is not None:
        logger.info(f"data: decoded images from {entry}")
        return found
    layout = layout_of(folder, size)
    need = len(folder.files) * layout.bytes
    if need > _free_bytes(base):
        raise RegnasError(
            f"decoding {len(folder.files)} images of {layout.channels}x{layout.height}x{layout.width} needs {need / 2**30:.1f} GiB "
            f"in {base}, which has {_free_bytes(base) / 2**30:.1f} GiB free; free space or pass a smaller --image-size"
        )
    created = [p for p in (base, *base.parents) if not p.exists()]
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".images-", dir=base))
    except OSError as exc:
        raise RegnasError(f"cannot write the image cache in {base} ({exc.strerror or exc}); choose a writable --out") from exc
    try:
        logger.info(f"data: decoding {len(folder.files)} images of {folder.root} into {entry}")
        _decode_into(tmp, folder, splits, layout, size)
        write_json(tmp / "meta.json", {"format": CACHE_FORMAT, "shape": [layout.channels, layout.height, layout.width]})
        _replace_entry(tmp, entry)
    except OSError as exc:
        raise RegnasError(f"cannot write the image cache in {base} ({exc.strerror or exc}); free space or choose another --out") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not entry.exists():  # nothing half-written: folders this call made go again
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()
    _prune(base, keep=entry)
    found = _open_entry(entry, splits)
    if found is None:
        raise RegnasError(f"the image cache {entry} was changed while it was written; run the command again")
    return found


def _decode_into(tmp: Path, folder: Folder, splits: dict[str, np.ndarray], layout: Layout, size: int | None) -> None:
    """Decode every split's images into raw files under `tmp`, in parallel, each image written where its split puts it."""
    shape = (layout.height, layout.width, layout.channels)
    maps = {
        name: np.memmap(tmp / f"{name}.u8", np.uint8, "w+", shape=(len(idx), layout.channels, layout.height, layout.width))
        for name, idx in splits.items()
        if len(idx)
    }
    for name, idx in splits.items():
        if not len(idx):
            (tmp / f"{name}.u8").touch()
    jobs = [(name, i, int(src)) for name, idx in splits.items() for i, src in enumerate(idx)]

    def work(chunk: list[tuple[str, int, int]]) -> list[None]:
        for name, i, src in chunk:
            px = decode(folder.files[src], layout.channels == 3, size)
            if px.shape != shape:
                h, w = px.shape[:2]
                raise RegnasError(
                    f"{folder.files[src]} is {w}x{h} px but the others are {layout.width}x{layout.height}; pass --image-size N to "
                    "resize them all"
                )
            maps[name][i] = px.transpose(2, 0, 1)
        return [None] * len(chunk)

    _in_threads(work, jobs, "decoding images")
    for m in maps.values():
        m.flush()


def _replace_entry(tmp: Path, entry: Path) -> None:
    """Move a finished entry into place; a concurrent writer's identical entry, already there, is kept."""
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if not (entry / "meta.json").is_file():
            raise


def _prune(base: Path, keep: Path) -> None:
    """Delete all but the newest KEEP_ENTRIES cache entries (always keeping `keep`)."""
    entries = sorted((p for p in base.glob("images-*") if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP_ENTRIES - 1 :]:
        shutil.rmtree(old, ignore_errors=True)
