"""Datasets and their seeded, stratified splits.

A dataset is named (`digits`, `fashion-mnist`) or a path (`.npz` with `x` and `y`, or an image
folder with one subfolder per class, decoded by `regnas.images`). Every source becomes uint8 images
shaped N×C×H×W (an image folder's memory-mapped from its decoded cache) and contiguous integer
labels, split into train / calib / val / test; `to_float` turns a batch into model inputs in [0, 1].
calib feeds BN recalibration (and quantization calibration), val drives the search, test is only
reported; no image is in two splits.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from regnas.errors import RegnasError
from regnas.images import Folder, check_image_size, load_folder, scan_folder

SPLITS = ("train", "calib", "val", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Split:
    """One split: images N×C×H×W uint8, int64 labels, and their indices in the source."""

    x: torch.Tensor
    y: torch.Tensor
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class SplitFractions:
    """Share of the data per split; calib and val are capped so big datasets train on most of it."""

    calib: float = 0.10
    val: float = 0.15
    test: float = 0.15
    calib_cap: int = 2000
    val_cap: int = 5000


@dataclass
class Dataset:
    """A dataset's splits with what a model needs to know about it, and how it was split."""

    name: str
    splits: dict[str, Split]
    class_names: list[str]
    digest: str = field(default="")
    seed: int = 0
    fractions: SplitFractions = field(default_factory=SplitFractions)
    image_size: int | None = None
    """The side an image folder's images were resized to (None: as they are)."""

    def split_record(self) -> dict:
        """What fixes the split (seed, fractions, image size) and its digest: a supernet records it, and what is built on it
        reuses it."""
        record = {"seed": self.seed, "fractions": asdict(self.fractions), "digest": self.digest}
        return record | ({"image_size": self.image_size} if self.image_size is not None else {})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        return tuple(self.splits["train"].x.shape[1:])

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]

    def whole(self) -> Split:
        """Every sample, in the source's own order (official test set after the training set)."""
        parts = list(self.splits.values())
        order = np.argsort(np.concatenate([p.index for p in parts]), kind="stable")
        cat = Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), np.concatenate([p.index for p in parts]))
        return Split(cat.x[order], cat.y[order], cat.index[order])

    def split(self, name: str | None) -> Split:
        """A split by name, or the whole set for None."""
        if name is None:
            return self.whole()
        if name not in self.splits:
            raise RegnasError(f"unknown split {name!r}; use one of {', '.join(self.splits)} (or omit --split for the whole set)")
        return self.splits[name]


_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str], tuple[np.ndarray, np.ndarray] | None]]] = {}


def register_dataset(name: str):
    """Register a named dataset loader returning (x, y, class_names, official_test or None)."""

    def wrap(fn):
        _LOADERS[name] = fn
        return fn

    return wrap


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


@register_dataset("digits")
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images / 16.0, d.target.astype(np.int64), [str(c) for c in d.target_names], None


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@register_dataset("fashion-mnist")
def _fashion_mnist():
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    paths = [FASHION_MNIST_DIR / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise RegnasError(
            f"Fashion-MNIST not found ({missing[0]} is missing): install the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist)"
        )
    try:
        xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
    except (OSError, EOFError, ValueError) as exc:
        raise RegnasError(f"Fashion-MNIST files under {FASHION_MNIST_DIR} are corrupt ({exc}): reinstall dataset-fashion-mnist") from exc
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return xtr, ytr.astype(np.int64), classes, (xte, yte.astype(np.int64))


UINT8_CHUNK = 4096
"""Images converted to uint8 at a time, so a float source never has a second full-size copy."""


def _to_uint8_images(x: np.ndarray, source: str) -> np.ndarray:
    """N×H×W or N×H×W×C images → uint8 N×C×H×W: uint8 as is, uint16 scaled by its range, other integers in 0..255 as
    they are, floats from [0, 1]; anything else is refused in one line."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] > 4:
            raise RegnasError(f"{source}: images shaped {x.shape[1:]} look channels-first; give N×H×W or N×H×W×C with C ≤ 4")
        x = np.transpose(x, (0, 3, 1, 2))
    else:
        raise RegnasError(f"{source}: x must be N×H×W or N×H×W×C, got shape {x.shape}")
    if x.dtype == np.uint8:
        out = np.ascontiguousarray(x)
        return out if out.flags.writeable else out.copy()
    if x.dtype == np.uint16:
        scale, lo, hi = 255 / 65535, 0, 65535
    elif np.issubdtype(x.dtype, np.integer):
        scale, lo, hi = 1.0, 0, 255
    elif np.issubdtype(x.dtype, np.floating):
        scale, lo, hi = 255.0, 0.0, 1.0
    else:
        raise RegnasError(f"{source}: x has dtype {x.dtype}; give uint8, uint16 or float images in [0, 1]")
    out = np.empty(x.shape, np.uint8)
    for i in range(0, len(x), UINT8_CHUNK):
        part = x[i : i + UINT8_CHUNK]
        if np.issubdtype(part.dtype, np.floating) and not np.isfinite(part).all():
            raise RegnasError(f"{source}: x contains NaN or infinite values; clean the data")
        if len(part) and (part.min() < lo or part.max() > hi):
            kind = "floats" if hi == 1.0 else f"{x.dtype} values"
            raise RegnasError(
                f"{source}: x has {kind} from {part.min():g} to {part.max():g}, outside {lo:g}..{hi:g}; "
                "give uint8 (0-255), uint16 or floats in [0, 1]"
            )
        out[i : i + UINT8_CHUNK] = np.rint(part * scale) if scale != 1.0 else part
    return out


def to_float(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """A batch of stored images as model inputs: uint8 → float32 in [0, 1] (floats pass through as float32)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else np.asarray(x, dtype=np.float32)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _check_labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.ndim != 1:
        raise RegnasError(f"{source}: y must be a 1-D vector of integer labels, got shape {y.shape}")
    if len(y) != n:
        raise RegnasError(f"{source}: x has {n} images but y has {len(y)} labels; give one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise RegnasError(f"{source}: y has dtype {y.dtype}; labels must be integers")
    return y.astype(np.int64)


def _load_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise RegnasError(f"{path}: an .npz dataset needs arrays 'x' (images) and 'y' (labels); found {sorted(z.files)}")
            x, y = z["x"], z["y"]
    except RegnasError:
        raise
    except Exception as exc:
        raise RegnasError(f"{path} is not a readable .npz file ({exc}); save it with numpy.savez(path, x=..., y=...)") from exc
    y = _check_labels(np.asarray(y), len(x), str(path))
    classes = [str(c) for c in np.unique(y)]
    return x, y, classes, None


def _stratified_split(y: np.ndarray, fractions: dict[str, float], caps: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-class seeded split; every class appears in every split. Unlisted remainder goes to train."""
    classes, counts = np.unique(y, return_counts=True)
    n = len(y)
    targets = {s: min(round(f * n), caps.get(s, n)) for s, f in fractions.items()}
    out: dict[str, list[np.ndarray]] = {s: [] for s in [*fractions, "train"]}
    for c, nc in zip(classes, counts):
        if nc < len(fractions) + 1:
            raise RegnasError(f"class {c} has only {nc} samples; every class needs at least {len(fractions) + 1} (one per split)")
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for s in fractions:
            k = max(1, round(targets[s] * nc / n))
            out[s].append(idx[start : start + k])
            start += k
        if start >= nc:
            raise RegnasError(f"class {c} has too few samples ({nc}) to leave any for training; add data")
        out["train"].append(idx[start:])
    return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


def load_recorded_split(spec: str, record: dict, source: str, cache: Path | None = None) -> Dataset:
    """The dataset `spec`, split (and decoded) as `record` (a supernet's `split_record`) says; other data or another split
    is bad input."""
    try:
        fractions = SplitFractions(**record["fractions"])
        seed, digest = int(record["seed"]), record["digest"]
        image_size = record.get("image_size")
        image_size = None if image_size is None else int(image_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise RegnasError(f"{source} records no usable data split ({exc}); retrain it with this regnas") from exc
    data = load_dataset(spec, seed, fractions, image_size=image_size, cache=cache)
    if data.digest != digest:
        raise RegnasError(
            f"{source} was trained on other data or another split than {spec} split with seed {seed}; "
            "use the data it was trained on, or train a supernet on this data"
        )
    return data


MAX_VAL_SHARE = 0.3
"""The most of a dataset `val_size` may take: the rest trains the supernet (and calibrates, and tests)."""
DIGEST_CHUNK = 2048
"""Images hashed at a time."""


def _source(spec: str) -> tuple[str, Path | None]:
    """What `spec` names: ("named", None), ("npz", path) or ("folder", path); anything else is bad input."""
    path = Path(spec)
    if spec in _LOADERS:
        return "named", None
    if path.suffix == ".npz":
        if not path.is_file():
            raise RegnasError(f"dataset file not found: {path}; check the path")
        return "npz", path
    if path.is_dir():
        return "folder", path
    if path.suffix or "/" in spec or path.exists():
        raise RegnasError(f"dataset path not found or not an .npz file / image folder: {spec}; check the path")
    raise RegnasError(f"unknown dataset {spec!r}; use one of {', '.join(dataset_names())}, an .npz file or an image folder")


def _digest(splits: dict[str, Split]) -> str:
    """SHA-256 of every split's images and labels, in split order, read a chunk at a time."""
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(s.encode())
        x = splits[s].x
        for i in range(0, len(x), DIGEST_CHUNK):
            h.update(x[i : i + DIGEST_CHUNK].numpy().tobytes())
        h.update(splits[s].y.numpy().tobytes())
    return h.hexdigest()


def _read(spec: str, kind: str, path: Path | None) -> tuple[np.ndarray | None, np.ndarray, list, tuple | None, str, Folder | None]:
    """(images as uint8, or None for a folder decoded later; labels; class names; the official test set if the data
    set has one; its name; the scanned folder, if it is one)."""
    if kind == "named":
        x, y, classes, official_test = _LOADERS[spec]()
        return _to_uint8_images(np.asarray(x), spec), y, classes, official_test, spec, None
    if kind == "npz":
        x, y, classes, _ = _load_npz(path)
        return _to_uint8_images(np.asarray(x), path.name), y, classes, None, path.name, None
    folder = scan_folder(path)
    return None, folder.labels, folder.class_names, None, path.name, folder


def _with_val_size(fractions: SplitFractions, val_size: int, n: int, name: str) -> SplitFractions:
    """`fractions` with a val split of `val_size` images (at most MAX_VAL_SHARE of the data)."""
    if val_size > MAX_VAL_SHARE * n:
        raise RegnasError(
            f"--val-size {val_size} takes more than {MAX_VAL_SHARE:.0%} of {name}'s {n} images; use at most {int(MAX_VAL_SHARE * n)}"
        )
    return replace(fractions, val=max(fractions.val, val_size / n), val_cap=val_size)


def load_dataset(
    spec: str,
    seed: int = 0,
    fractions: SplitFractions = SplitFractions(),
    val_size: int | None = None,
    image_size: int | None = None,
    cache: Path | None = None,
) -> Dataset:
    """Load a dataset by name or path and split it, deterministically for a given seed; images stay uint8.

    `val_size` asks for a larger (or smaller) val split than the default cap, so the search compares
    candidates on more samples; it becomes part of the recorded fractions. `image_size` resizes an image
    folder's images (shorter side, then a centre crop); `cache` is the folder its decoded images are kept in
    (a build's own; default: the user cache).
    """
    kind, path = _source(spec)
    check_image_size(image_size)
    if image_size is not None and kind != "folder":
        raise RegnasError(f"--image-size resizes the images of an image folder; {spec} is not one, so drop --image-size")
    x, y, classes, official_test, name, folder = _read(spec, kind, path)
    if len(y) == 0:
        raise RegnasError(f"dataset {name} is empty; give at least a few images per class")
    labels, y = np.unique(y, return_inverse=True)
    if len(labels) < 2:
        raise RegnasError(f"dataset {name} has a single class ({classes[0] if classes else labels[0]}); a classifier needs at least two")
    if len(classes) != len(labels):
        classes = [str(c) for c in labels]
    if val_size is not None:
        fractions = _with_val_size(fractions, val_size, len(y), name)
    rng = np.random.default_rng(seed)
    fr = {"calib": fractions.calib, "val": fractions.val}
    caps = {"calib": fractions.calib_cap, "val": fractions.val_cap}
    if official_test is None:
        fr["test"] = fractions.test
    idx = _stratified_split(y, fr, caps, rng)
    idx = {s: idx[s] for s in SPLITS if s in idx}
    if x is None:
        arrays = load_folder(folder, idx, json.dumps([seed, asdict(fractions)]), image_size, cache)
    else:
        arrays = {s: x[i] for s, i in idx.items()}
    splits = {s: Split(torch.from_numpy(arrays[s]), torch.from_numpy(y[i].astype(np.int64)), i) for s, i in idx.items()}
    if official_test is not None:
        xt, yt = official_test
        xt = _to_uint8_images(np.asarray(xt), name)
        yt = np.searchsorted(labels, yt)
        splits["test"] = Split(torch.from_numpy(xt), torch.from_numpy(yt.astype(np.int64)), len(y) + np.arange(len(xt)))
    splits = {s: splits[s] for s in SPLITS}
    return Dataset(
        name=name,
        splits=splits,
        class_names=list(classes),
        digest=_digest(splits),
        seed=seed,
        fractions=fractions,
        image_size=image_size,
    )
