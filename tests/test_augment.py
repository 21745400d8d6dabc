"""Augmentation policies: the shapes and content they keep, their randomness, and the default per kind of data."""

import pytest
import torch

from regnas.augment import augment_names, create_augment, default_augment
from regnas.errors import RegnasError


def _ramp(n=64, c=3, size=32) -> torch.Tensor:
    """Images whose pixel value encodes its column, so a shift or a mirror is visible."""
    cols = torch.arange(size, dtype=torch.float32) / size
    return cols.expand(n, c, size, size).clone()


@pytest.mark.parametrize("name", augment_names())
def test_every_policy_keeps_shape_and_range_and_repeats_for_a_seed(name):
    x = torch.rand(16, 3, 32, 32)
    policy = create_augment(name)
    a = policy(x, torch.Generator().manual_seed(1))
    b = policy(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_photo_mirrors_about_half_and_crops_within_an_eighth():
    x = _ramp()
    out = create_augment("photo")(x, torch.Generator().manual_seed(0))
    centre = out[:, 0, 16, 16]
    mirrored = out[:, 0, 16, 0] > out[:, 0, 16, -1]
    assert 16 <= int(mirrored.sum()) <= 48
    # the centre pixel moves by at most 4 px (32 / 8) either way, mirrored or not
    assert (((centre * 32 - 16).abs() <= 4 + 1e-4) | ((centre * 32 - 15).abs() <= 4 + 1e-4)).all()
    assert not torch.equal(out, x)


def test_glyph_shifts_without_mirroring_and_leaves_small_images_alone():
    x = _ramp(size=28)
    out = create_augment("glyph")(x, torch.Generator().manual_seed(0))
    for row in out[:, 0, 14]:
        kept = row[row > 0]
        assert (kept[1:] > kept[:-1]).all()  # the ramp moved (zeros filled in at one edge), never mirrored
    assert not torch.equal(out, x)
    tiny = torch.rand(4, 1, 8, 8)
    assert torch.equal(create_augment("glyph")(tiny, torch.Generator()), tiny)


def test_the_default_follows_the_data_and_unknown_names_are_refused():
    assert default_augment((3, 32, 32)) == "photo" and default_augment((1, 28, 28)) == "glyph"
    with pytest.raises(RegnasError, match="unknown --augment 'mixup'; use one of glyph, none, photo"):
        create_augment("mixup")
