"""Datasets and their seeded, stratified splits.

A dataset is named (`digits`, `fashion-mnist`) or a path (`.npz` with `x` and `y`, or an image
folder with one subfolder per class). Every source becomes float32 images in [0, 1] shaped
N×C×H×W and contiguous integer labels, split into train / calib / val / test. calib feeds BN
recalibration (and later quantization calibration), val drives the search, test is only reported;
val and test never overlap.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from regnas.errors import RegnasError

SPLITS = ("train", "calib", "val", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass
class Split:
    """One split: images N×C×H×W float32 in [0, 1], int64 labels, and their indices in the source."""

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

    def split_record(self) -> dict:
        """What fixes the split (seed, fractions) and its digest: a supernet records it, and what is built on it reuses it."""
        return {"seed": self.seed, "fractions": asdict(self.fractions), "digest": self.digest}

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
    x = (d.images / 16.0).astype(np.float32)
    return x, d.target.astype(np.int64), [str(c) for c in d.target_names], None


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


def _to_float_images(x: np.ndarray, source: str) -> np.ndarray:
    """N×H×W or N×H×W×C, uint8 or float → float32 N×C×H×W in [0, 1] (floats are kept as given)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] > 4:
            raise RegnasError(f"{source}: images shaped {x.shape[1:]} look channels-first; give N×H×W or N×H×W×C with C ≤ 4")
        x = np.transpose(x, (0, 3, 1, 2))
    else:
        raise RegnasError(f"{source}: x must be N×H×W or N×H×W×C, got shape {x.shape}")
    if x.dtype == np.uint8:
        out = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
        out = x.astype(np.float32)
    else:
        raise RegnasError(f"{source}: x has dtype {x.dtype}; give uint8 or float images")
    if not np.isfinite(out).all():
        raise RegnasError(f"{source}: x contains NaN or infinite values; clean the data")
    return np.ascontiguousarray(out)


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


def _load_image_folder(path: Path):
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise RegnasError(f"{path}: an image folder needs one subfolder per class; found none")
    images, labels, sizes, modes = [], [], set(), set()
    for label, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im.load()
                    modes.add("L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB")
                    images.append(im.copy())
            except (UnidentifiedImageError, OSError) as exc:
                raise RegnasError(f"{f} is not a readable image ({exc}); remove or replace it") from exc
            labels.append(label)
            sizes.add(images[-1].size)
        if not labels or labels[-1] != label:
            raise RegnasError(f"{d} has no images (class {d.name!r}); add images to it or remove the folder")
    if len(sizes) > 1:
        s = sorted(sizes)
        raise RegnasError(f"{path}: images have different sizes ({s[0][0]}x{s[0][1]} and {s[1][0]}x{s[1][1]}); resize them to one size")
    mode = "RGB" if "RGB" in modes else "L"
    x = np.stack([np.asarray(im.convert(mode), dtype=np.uint8) for im in images]) if images else np.zeros((0, 1, 1), np.uint8)
    return x, np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs], None


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


def load_recorded_split(spec: str, record: dict, source: str) -> Dataset:
    """The dataset `spec`, split as `record` (a supernet's `split_record`) says; other data or another split is bad input."""
    try:
        fractions = SplitFractions(**record["fractions"])
        seed, digest = int(record["seed"]), record["digest"]
    except (KeyError, TypeError, ValueError) as exc:
        raise RegnasError(f"{source} records no usable data split ({exc}); retrain it with this regnas") from exc
    data = load_dataset(spec, seed, fractions)
    if data.digest != digest:
        raise RegnasError(
            f"{source} was trained on other data or another split than {spec} split with seed {seed}; "
            "use the data it was trained on, or train a supernet on this data"
        )
    return data


MAX_VAL_SHARE = 0.3
"""The most of a dataset `val_size` may take: the rest trains the supernet (and calibrates, and tests)."""


def load_dataset(spec: str, seed: int = 0, fractions: SplitFractions = SplitFractions(), val_size: int | None = None) -> Dataset:
    """Load a dataset by name or path and split it, deterministically for a given seed.

    `val_size` asks for a larger (or smaller) val split than the default cap, so the search compares
    candidates on more samples; it becomes part of the recorded fractions.
    """
    path = Path(spec)
    if spec in _LOADERS:
        x, y, classes, official_test = _LOADERS[spec]()
        name = spec
    elif path.suffix == ".npz":
        if not path.is_file():
            raise RegnasError(f"dataset file not found: {path}; check the path")
        x, y, classes, official_test = _load_npz(path)
        name = path.name
    elif path.is_dir():
        x, y, classes, official_test = _load_image_folder(path)
        name = path.name
    elif path.suffix or "/" in spec or path.exists():
        raise RegnasError(f"dataset path not found or not an .npz file / image folder: {spec}; check the path")
    else:
        raise RegnasError(f"unknown dataset {spec!r}; use one of {', '.join(dataset_names())}, an .npz file or an image folder")

    x = _to_float_images(np.asarray(x), name)
    if len(x) == 0:
        raise RegnasError(f"dataset {name} is empty; give at least a few images per class")
    labels, y = np.unique(y, return_inverse=True)
    if len(labels) < 2:
        raise RegnasError(f"dataset {name} has a single class ({classes[0] if classes else labels[0]}); a classifier needs at least two")
    if len(classes) != len(labels):
        classes = [str(c) for c in labels]

    if val_size is not None:
        if val_size > MAX_VAL_SHARE * len(x):
            raise RegnasError(
                f"--val-size {val_size} takes more than {MAX_VAL_SHARE:.0%} of {name}'s {len(x)} images; "
                f"use at most {int(MAX_VAL_SHARE * len(x))}"
            )
        fractions = replace(fractions, val=max(fractions.val, val_size / len(x)), val_cap=val_size)
    rng = np.random.default_rng(seed)
    fr = {"calib": fractions.calib, "val": fractions.val}
    caps = {"calib": fractions.calib_cap, "val": fractions.val_cap}
    if official_test is None:
        fr["test"] = fractions.test
    idx = _stratified_split(y, fr, caps, rng)
    splits = {s: Split(torch.from_numpy(x[idx[s]]), torch.from_numpy(y[idx[s]].astype(np.int64)), idx[s]) for s in idx}
    if official_test is not None:
        xt, yt = official_test
        xt = _to_float_images(np.asarray(xt), name)
        yt = np.searchsorted(labels, yt)
        splits["test"] = Split(torch.from_numpy(xt), torch.from_numpy(yt.astype(np.int64)), len(x) + np.arange(len(xt)))
    splits = {s: splits[s] for s in SPLITS}

    h = hashlib.sha256()
    for s in SPLITS:
        h.update(s.encode())
        h.update(splits[s].x.numpy().tobytes())
        h.update(splits[s].y.numpy().tobytes())
    return Dataset(name=name, splits=splits, class_names=list(classes), digest=h.hexdigest(), seed=seed, fractions=fractions)
