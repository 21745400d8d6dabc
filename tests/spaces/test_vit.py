"""What is specific to `vit`: head and MLP slicing, the token grid, importance ordering, no batch norm."""

import pytest
import torch

from regnas.errors import RegnasError
from regnas.evaluate import predict, recalibrate_bn
from regnas.spaces import create_space, space_class
from regnas.spaces.vit import ViTArch, token_grid
from tests.spaces.test_spaces import randomised_supernet


def make(shape=(1, 8, 8)):
    return create_space("vit", space_class("vit").default_config(shape, 10))


@pytest.mark.parametrize("shape,grid", [((1, 8, 8), (4, 4)), ((1, 28, 28), (5, 5)), ((3, 13, 17), (5, 6))])
def test_patches_cover_the_image_on_a_small_grid(shape, grid):
    space = make(shape)
    assert token_grid(space.config) == grid
    assert space.build_supernet().stem(torch.zeros(1, *shape)).shape == (1, 64, *grid)


def test_heads_and_mlp_units_are_prefix_slices():
    space = make()
    supernet = randomised_supernet(space)
    full = supernet.state_dict()
    arch = ViTArch((2, 4, 3), (4, 2, 3))
    net = space.extract(supernet, arch).state_dict()
    hd = space.config["head_dim"]
    for m in "qkv":
        assert torch.equal(net[f"blocks.0.{m}.weight"], full[f"blocks.0.{m}.weight"][: 2 * hd])
        assert torch.equal(net[f"blocks.0.{m}.bias"], full[f"blocks.0.{m}.bias"][: 2 * hd])
    assert torch.equal(net["blocks.2.proj.weight"], full["blocks.2.proj.weight"][:, : 3 * hd])
    assert torch.equal(net["blocks.1.fc1.weight"], full["blocks.1.fc1.weight"][:128])
    assert torch.equal(net["blocks.1.fc2.weight"], full["blocks.1.fc2.weight"][:, :128])
    assert not any(k.startswith("blocks.3.") for k in net)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 13, 17)])
def test_supernet_equals_extracted_subnet_on_ragged_archs(shape):
    space = make(shape)
    supernet = randomised_supernet(space, seed=1)
    x = torch.randn(3, *shape)
    for arch in (space.largest(), space.smallest(), ViTArch((3, 2, 4, 2), (2, 4, 3, 3))):
        with torch.no_grad():
            torch.testing.assert_close(supernet(x, arch), space.extract(supernet, arch)(x))


def test_channel_order_keeps_the_largest_function_and_puts_important_heads_first():
    space = make()
    supernet = randomised_supernet(space, seed=2)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = supernet(x, space.largest())
        state = supernet.state_dict()
        for name, dim, perm in space.channel_order(supernet):
            state[name].copy_(state[name].index_select(dim, perm))
        torch.testing.assert_close(supernet(x, space.largest()), before)
    hd = space.config["head_dim"]
    heads = supernet.blocks[0].proj.weight.abs().sum((0, 2, 3)).reshape(-1, hd).sum(1)
    assert torch.all(heads[:-1] >= heads[1:])
    units = supernet.blocks[0].fc2.weight.abs().sum((0, 2, 3))
    assert torch.all(units[:-1] >= units[1:])


def test_evaluation_path_works_without_batch_norm():
    """recalibrate_bn finds nothing to recalibrate and leaves the function alone; channels-last predict agrees."""
    space = make()
    supernet = randomised_supernet(space, seed=4)
    arch = ViTArch((3, 2), (2, 4))
    x = torch.randn(20, 1, 8, 8)
    with torch.no_grad():
        expected = supernet(x, arch).argmax(1).numpy()
    net = recalibrate_bn(space.extract(supernet, arch), x)
    assert (predict(net, x) == expected).all()


def test_bad_arch_json_gives_a_one_line_message():
    space = make()
    for bad in ({"depth": 2, "heads": [2, 5], "mlp_ratio": [2, 2]}, {"depth": 3, "heads": [2, 2], "mlp_ratio": [2, 2]}, {"depth": 2}):
        with pytest.raises(RegnasError) as exc:
            space.from_json(bad)
        assert "\n" not in str(exc.value) and "vit" in str(exc.value)


def test_attention_traces_without_size_arithmetic():
    """Core ML's converter fails on traced `aten::Int` (size arithmetic); attention reshapes must not produce it."""
    space = make()
    block, shape = space.build_unit(("block", 2, 2))
    with torch.no_grad():
        graph = torch.jit.trace(block.eval(), torch.rand(1, *shape)).inlined_graph
    assert not [n for n in graph.nodes() if n.kind() in ("aten::Int", "aten::floordiv")]
