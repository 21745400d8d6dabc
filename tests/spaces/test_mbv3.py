"""mbv3 specifics: the stride plan per input size, the gene table, and nesting by kernel centre crops."""

import random

import pytest
import torch

from regnas.errors import RegnasError
from regnas.spaces import create_space, space_class
from regnas.spaces.base import conv_strides, stage_resolutions


def make(shape):
    return create_space("mbv3", space_class("mbv3").default_config(shape, 10))


@pytest.mark.parametrize("size,first,last", [(28, 14, 4), (32, 16, 4), (8, 8, 2), (224, 56, 14)])
def test_stride_plan_keeps_small_inputs_spatial(size, first, last):
    """28–32 px: 14×14-16×16 in the first stage and 4×4 at the end (the nominal ÷16 plan would end at 2×2)."""
    space = make((1, size, size))
    resolutions = stage_resolutions(space.config)
    assert resolutions[0][1] == [first, first] and resolutions[-1][1] == [last, last]
    assert [space.config["stem_stride"], *(st["stride"] for st in space.config["stages"])] == conv_strides(size)
    net = space.build_subnet(space.largest()).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 1, size, size)).shape == (2, 10)


def test_too_small_images_are_refused_naming_the_minimum():
    with pytest.raises(RegnasError, match="at least 4×4 px"):
        make((1, 3, 3))


def test_gene_table_and_depth_come_from_the_config():
    space = make((1, 8, 8))
    assert [(g.name, g.choices, g.per) for g in space.genes] == [("kernel", (3, 5, 7), "block"), ("expand", (3, 4, 6), "block")]
    assert space.depths.choices == (2, 3, 4) and space.n_stages == 4
    largest, smallest = space.largest(), space.smallest()
    assert largest.depth == (4,) * 4 and set(sum(largest.kernel, ())) == {7} and set(sum(smallest.expand, ())) == {3}


def test_a_smaller_kernel_is_the_centre_crop_of_the_larger():
    space = make((1, 8, 8))
    torch.manual_seed(0)
    supernet = space.build_supernet()
    rng = random.Random(0)
    big = space.sample(rng)
    small = space.shrink(big, rng)
    while small is not None and small.kernel == big.kernel:
        small = space.shrink(small, rng)
    assert small is not None and space.contains(big, small)
    net = space.extract(supernet, small)
    for s, ks in enumerate(small.kernel):
        for j, k in enumerate(ks):
            full = supernet.stages[s][j].dw.conv.weight
            pad = (full.shape[-1] - k) // 2
            got = net.stages[s][j].dw[0].weight
            assert torch.equal(got, full[: got.shape[0], :, pad : pad + k, pad : pad + k])


def test_residual_blocks_start_as_the_identity():
    """Zero-γ: a fresh supernet computes the same function at every depth, so skipped blocks start harmless."""
    space = make((1, 8, 8))
    torch.manual_seed(0)
    supernet = space.build_supernet().eval()
    deep, shallow = space.largest(), space.smallest()
    shallow_same_blocks = type(deep)(tuple(k[:2] for k in deep.kernel), tuple(e[:2] for e in deep.expand))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(supernet(x, deep), supernet(x, shallow_same_blocks))
        assert not torch.equal(supernet(x, deep), supernet(x, shallow))
