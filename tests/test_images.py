"""Image folders: any size, mode and format decoded once into a uint8 cache; bad files are one line naming them."""

import os

import numpy as np
import pytest
from PIL import Image

from regnas import images
from regnas.data import load_dataset
from regnas.errors import RegnasError


def _photo(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def _folder(root, n=8, sizes=((40, 30), (24, 36)), modes=("RGB", "L", "P", "RGBA"), suffixes=(".jpg", ".png", ".webp")):
    """Two classes of photos of several sizes, modes and formats."""
    for c, cls in enumerate(["ant", "bee"]):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            suffix = suffixes[i % len(suffixes)]
            mode = modes[i % len(modes)]
            im = _photo(sizes[i % len(sizes)], 100 * c + i, mode)
            if suffix == ".jpg" and mode not in ("RGB", "L"):
                im = im.convert("RGB")
            im.save(root / cls / f"{i}{suffix}")
    return root


def test_decode_resizes_the_shorter_side_then_crops_the_centre(tmp_path):
    arr = np.zeros((20, 40), np.uint8)
    arr[:, 10:30] = 255  # the centre half is white
    Image.fromarray(arr).save(tmp_path / "wide.png")
    px = images.decode(tmp_path / "wide.png", colour=False, size=10)
    assert px.shape == (10, 10, 1)
    assert px[:, 1:-1, 0].min() > 200  # the centre 20 px of 40 became the whole 10-px crop
    colour = images.decode(tmp_path / "wide.png", colour=True, size=10)
    assert colour.shape == (10, 10, 3) and (colour[..., 0] == colour[..., 2]).all()


def test_sixteen_bit_images_are_scaled_by_their_range(tmp_path):
    arr = np.full((8, 8), 4095, np.uint16)
    arr[0, 0] = 65535
    Image.fromarray(arr).save(tmp_path / "deep.png")
    px = images.decode(tmp_path / "deep.png", colour=False, size=None)[..., 0]
    assert px[0, 0] == 255 and px[1, 1] == round(4095 * 255 / 65535)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # left half white
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    im.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    px = images.decode(tmp_path / "rotated.jpg", colour=True, size=None)
    assert px.shape == (20, 10, 3) and px[:10].mean() > 200 and px[10:].mean() < 50


def test_any_sizes_modes_and_formats_with_image_size(tmp_path):
    root = _folder(tmp_path / "photos")
    with pytest.raises(RegnasError, match="different sizes.*--image-size") as exc:
        load_dataset(str(root), cache=tmp_path / "cache")
    assert "\n" not in str(exc.value)
    d = load_dataset(str(root), image_size=16, cache=tmp_path / "cache")
    assert d.input_shape == (3, 16, 16) and d.class_names == ["ant", "bee"]
    whole = d.whole()
    assert len(whole) == 16 and whole.x.dtype.is_floating_point is False
    again = images.decode(sorted((root / "bee").iterdir())[3], colour=True, size=16).transpose(2, 0, 1)
    assert (whole.x[8 + 3].numpy() == again).all()  # images land where the split put them


def test_the_cache_is_reused_and_keyed_on_files_and_settings(tmp_path, monkeypatch):
    root = _folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    first = load_dataset(str(root), image_size=12, cache=cache)
    decoded = []
    real = images.decode
    monkeypatch.setattr(images, "decode", lambda *a: decoded.append(a) or real(*a))
    again = load_dataset(str(root), image_size=12, cache=cache)
    assert decoded == [] and again.digest == first.digest
    assert (again["train"].x.numpy() == first["train"].x.numpy()).all()
    other_size = load_dataset(str(root), image_size=10, cache=cache)
    assert len(decoded) == 16 and other_size.input_shape == (3, 10, 10)
    (root / "ant" / "0.jpg").write_bytes((root / "ant" / "3.jpg").read_bytes())  # an edited file
    os.utime(root / "ant" / "0.jpg", ns=(1, 1))
    edited = load_dataset(str(root), image_size=12, cache=cache)
    assert len(decoded) == 32 and edited.digest != first.digest
    assert len(list(cache.glob("images-*"))) == images.KEEP_ENTRIES
    assert all(p.suffix in (".u8", ".json") for p in cache.rglob("*") if p.is_file())


def test_another_seed_splits_the_same_images_otherwise(tmp_path):
    root = _folder(tmp_path / "photos", n=12)
    a = load_dataset(str(root), seed=0, image_size=8, cache=tmp_path / "cache")
    b = load_dataset(str(root), seed=1, image_size=8, cache=tmp_path / "cache")
    assert a.digest != b.digest
    assert (a.whole().x.numpy() == b.whole().x.numpy()).all()


@pytest.mark.parametrize(
    "content,match",
    [
        (b"\x89PNG\r\n\x1a\n not really", "0.png is not a readable image"),
        (b"", "0.png is not a readable image"),
    ],
)
def test_a_corrupt_file_is_one_line_naming_it(tmp_path, content, match):
    root = _folder(tmp_path / "photos", sizes=((8, 8),))
    (root / "ant" / "0.png").write_bytes(content)
    with pytest.raises(RegnasError, match=match) as exc:
        load_dataset(str(root), cache=tmp_path / "cache")
    assert "\n" not in str(exc.value)


def test_a_truncated_jpeg_is_one_line_naming_it(tmp_path):
    root = _folder(tmp_path / "photos", sizes=((64, 64),), suffixes=(".jpg",))
    whole = (root / "bee" / "2.jpg").read_bytes()
    (root / "bee" / "2.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RegnasError, match="2.jpg is not a readable image"):
        load_dataset(str(root), cache=tmp_path / "cache")


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    root = _folder(tmp_path / "photos", sizes=((8, 8),))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 30000×30000 grayscale, no pixel data behind it
    (root / "bee" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(RegnasError, match="bomb.png .*pixels") as exc:
        load_dataset(str(root), cache=tmp_path / "cache")
    assert "\n" not in str(exc.value)


def test_class_folders_whose_names_are_not_utf8_get_printable_names(tmp_path):
    root = tmp_path / "photos"
    for name in (b"caf\xe9", b"tea"):
        d = os.path.join(os.fsencode(root), name)
        os.makedirs(d)
        for i in range(6):
            _photo((8, 8), i).save(os.path.join(os.fsdecode(d), f"{i}.png"))
    d = load_dataset(str(root), cache=tmp_path / "cache")
    assert d.class_names == ["caf\ufffd", "tea"]
    "".join(d.class_names).encode("utf-8")


def test_image_size_is_for_image_folders_and_bounded(tmp_path):
    with pytest.raises(RegnasError, match="drop --image-size"):
        load_dataset("digits", image_size=8)
    with pytest.raises(RegnasError, match="outside 4 to"):
        load_dataset(str(_folder(tmp_path / "photos")), image_size=100000, cache=tmp_path / "cache")


def test_a_full_disk_is_refused_before_decoding(tmp_path, monkeypatch):
    root = _folder(tmp_path / "photos", sizes=((8, 8),))
    monkeypatch.setattr(images, "_free_bytes", lambda path: 100)
    with pytest.raises(RegnasError, match="needs .* GiB .*free space"):
        load_dataset(str(root), cache=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("images-*"))
