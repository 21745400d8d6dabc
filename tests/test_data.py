import numpy as np
import pytest
import torch
from PIL import Image

from regnas import data as data_mod
from regnas.data import load_dataset, to_float
from regnas.errors import RegnasError


def test_digits_splits_are_stratified_disjoint_and_seeded(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    sizes = {s: len(digits[s]) for s in digits.splits}
    assert sum(sizes.values()) == 1797
    for s in digits.splits:
        assert set(np.unique(digits[s].y.numpy())) == set(range(10)), s
        assert digits[s].x.dtype == torch.uint8 and int(digits[s].x.max()) == 255
    index = {s: set(digits[s].index.tolist()) for s in digits.splits}
    assert not index["val"] & index["test"]
    assert sum(len(v) for v in index.values()) == len(set().union(*index.values())) == 1797
    again = load_dataset("digits", seed=0)
    assert again.digest == digits.digest
    other = load_dataset("digits", seed=1)
    assert other.digest != digits.digest


def test_whole_set_is_in_source_order(digits):
    from sklearn.datasets import load_digits

    whole = digits.whole()
    assert whole.index.tolist() == list(range(1797))
    assert whole.y.tolist() == load_digits().target.tolist()
    assert digits.split("test") is digits["test"]
    with pytest.raises(RegnasError, match="unknown split"):
        digits.split("holdout")


def test_val_and_test_indices_never_overlap():
    y = np.repeat(np.arange(4), 50)
    idx = data_mod._stratified_split(y, {"calib": 0.1, "val": 0.2, "test": 0.2}, {}, np.random.default_rng(0))
    all_idx = np.concatenate(list(idx.values()))
    assert len(all_idx) == len(set(all_idx.tolist())) == 200
    assert not set(idx["val"]) & set(idx["test"])


def test_npz_grayscale_and_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "a.npz"
    np.savez(p, x=rng.integers(0, 256, (60, 6, 5), dtype=np.uint8), y=np.repeat([3, 7, 9], 20))
    d = load_dataset(str(p))
    assert d.input_shape == (1, 6, 5) and d.class_names == ["3", "7", "9"]
    assert d["train"].x.dtype == torch.uint8
    q = tmp_path / "b.npz"
    floats = rng.random((40, 4, 4, 3)).astype(np.float32)
    np.savez(q, x=floats, y=np.repeat([0, 1], 20))
    e = load_dataset(str(q))
    assert e.input_shape == (3, 4, 4) and e["train"].x.dtype == torch.uint8
    whole = to_float(e.whole().x).numpy()
    assert np.abs(whole - floats.transpose(0, 3, 1, 2)).max() <= 0.5 / 255 + 1e-6  # stored to the nearest of 256 levels


def test_npz_uint16_is_scaled_by_its_range_and_out_of_range_values_are_refused(tmp_path):
    p = tmp_path / "wide.npz"
    np.savez(p, x=np.stack([np.full((4, 4), v, np.uint16) for v in (0, 257, 65535)] * 10), y=np.tile([0, 1, 2], 10))
    x = load_dataset(str(p)).whole().x
    assert sorted(set(x.flatten().tolist())) == [0, 1, 255]
    for bad, match in ((np.full((20, 4, 4), 2.0, np.float32), "outside 0..1"), (np.full((20, 4, 4), 300, np.int32), "outside 0..255")):
        q = tmp_path / "bad-range.npz"
        np.savez(q, x=bad, y=np.arange(20) % 2)
        with pytest.raises(RegnasError, match=match):
            load_dataset(str(q))


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"x": np.zeros((10, 4, 4), np.uint8)}, "needs arrays 'x'"),
        ({"x": np.zeros((10, 4, 4), np.uint8), "y": np.zeros(9, int)}, "one label per image"),
        ({"x": np.zeros((10, 4, 4), np.uint8), "y": np.zeros(10, int)}, "single class"),
        ({"x": np.zeros((0, 4, 4), np.uint8), "y": np.zeros(0, int)}, "empty"),
        ({"x": np.zeros((10, 4), np.uint8), "y": np.arange(10) % 2}, "N×H×W"),
        ({"x": np.zeros((10, 4, 4), np.uint8), "y": np.linspace(0, 1, 10)}, "integers"),
        ({"x": np.zeros((4, 4, 4), np.uint8), "y": np.array([0, 1, 1, 1])}, "class 0 has only 1"),
    ],
)
def test_bad_npz_is_a_one_line_error(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(RegnasError, match=match) as exc:
        load_dataset(str(p))
    assert "\n" not in str(exc.value)


def test_corrupt_npz_unknown_name_and_missing_path(tmp_path):
    p = tmp_path / "c.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(RegnasError, match="not a readable .npz"):
        load_dataset(str(p))
    with pytest.raises(RegnasError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(RegnasError, match="not found"):
        load_dataset(str(tmp_path / "missing.npz"))


def _write_folder(root, sizes):
    for cls, size in zip(["cat", "dog"], sizes):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((size, size), i * 20 + (cls == "dog") * 100, np.uint8)).save(root / cls / f"{i}.png")


def test_image_folder(tmp_path):
    _write_folder(tmp_path / "ok", [6, 6])
    d = load_dataset(str(tmp_path / "ok"), cache=tmp_path / "cache")
    assert d.class_names == ["cat", "dog"] and d.input_shape == (1, 6, 6)
    assert isinstance(d["train"].x.numpy().base, np.memmap) or d["train"].x.numpy().base is not None
    for s in d.splits:  # each image is its file's pixels, in its split
        for img, src, label in zip(d[s].x, d[s].index, d[s].y):
            assert int(img[0, 0, 0]) == (src % 8) * 20 + label * 100
    _write_folder(tmp_path / "mixed", [6, 7])
    with pytest.raises(RegnasError, match="different sizes.*--image-size"):
        load_dataset(str(tmp_path / "mixed"), cache=tmp_path / "cache")
    resized = load_dataset(str(tmp_path / "mixed"), image_size=5, cache=tmp_path / "cache")
    assert resized.input_shape == (1, 5, 5) and resized.split_record()["image_size"] == 5


def test_fashion_mnist_missing_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(RegnasError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(not data_mod.FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_uses_the_official_test_set():
    d = load_dataset("fashion-mnist")
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert len(d["test"]) == 10000
    assert len(d["train"]) + len(d["calib"]) + len(d["val"]) == 60000


def test_val_size_enlarges_val_from_train_and_is_recorded():
    from regnas.data import SplitFractions, load_recorded_split

    default = load_dataset("digits", 0)
    bigger = load_dataset("digits", 0, val_size=400)
    assert abs(len(bigger["val"]) - 400) <= 10 and len(bigger["val"]) > len(default["val"])
    assert len(bigger["train"]) == len(default["train"]) - (len(bigger["val"]) - len(default["val"]))
    assert set(bigger["val"].index).isdisjoint(bigger["test"].index) and set(bigger["val"].index).isdisjoint(bigger["train"].index)
    again = load_recorded_split("digits", bigger.split_record(), "ckpt")
    assert again.digest == bigger.digest and again.fractions == SplitFractions(**bigger.split_record()["fractions"])
    with pytest.raises(RegnasError, match="at most 539"):
        load_dataset("digits", 0, val_size=1000)
