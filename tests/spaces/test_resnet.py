"""What is specific to `resnet`: width-multiplier slicing, unit keys, importance ordering, validation."""

import random

import pytest
import torch

from regnas.errors import RegnasError
from regnas.spaces import create_space, space_class
from regnas.spaces.resnet import ResNetArch, mid_width, stage_width
from tests.spaces.test_spaces import randomised_supernet


def make(shape=(1, 8, 8)):
    return create_space("resnet", space_class("resnet").default_config(shape, 10))


def test_width_multiplier_takes_the_first_output_channels_of_a_stage():
    space = make()
    supernet = randomised_supernet(space)
    full = supernet.state_dict()
    big = space.largest()
    arch = ResNetArch((1.0, 0.65, 1.0, 0.8), tuple((0.35,) * d for d in big.depth))
    net = space.extract(supernet, arch).state_dict()
    w1, w3 = stage_width(128, 0.65), stage_width(256, 0.8)
    mid1 = mid_width(w1, 0.35)
    assert net["stages.1.0.conv3.conv.weight"].shape == (w1, mid1, 1, 1)
    assert torch.equal(net["stages.1.0.conv3.conv.weight"], full["stages.1.0.conv3.conv.weight"][:w1, :mid1])
    assert torch.equal(net["stages.1.0.shortcut.bn.running_mean"], full["stages.1.0.shortcut.bn.running_mean"][:w1])
    assert torch.equal(net["stages.2.0.conv1.conv.weight"], full["stages.2.0.conv1.conv.weight"][:, :w1])
    assert torch.equal(net["head.classifier.weight"], full["head.classifier.weight"][:, :w3])


def test_channel_counts_are_distinct_per_choice_and_colliding_configs_are_refused():
    space = make()
    widths = sorted(space.config["width_mults"])
    for st in space.config["stages"]:
        ws = [stage_width(st["width"], m) for m in widths]
        assert ws == sorted(set(ws))
        for w in ws:
            mids = [mid_width(w, e) for e in sorted(space.config["expands"])]
            assert mids == sorted(set(mids))
    config = space_class("resnet").default_config((1, 8, 8), 10)
    config["stages"][0]["width"] = 16
    with pytest.raises(RegnasError, match="equal channel counts"):
        create_space("resnet", config)


def test_unit_keys_carry_the_input_width_set_by_the_previous_stage():
    space = make()
    big = space.largest()
    narrow = ResNetArch((0.65, *big.width[1:]), big.expand)
    first_of_stage_1 = [u for u in space.units(narrow) if u[:3] == ("block", 1, False)][0]
    assert first_of_stage_1 == ("block", 1, False, stage_width(64, 0.65), 128, mid_width(128, 0.35))
    assert first_of_stage_1 not in space.units(big)
    assert space.units(narrow)[-1] == ("head", 256)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 13, 17)])
def test_channel_order_keeps_the_largest_function_and_puts_important_channels_first(shape):
    space = make(shape)
    supernet = randomised_supernet(space, seed=3)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        before = supernet(x, space.largest())
        state = supernet.state_dict()
        perms = space.channel_order(supernet)
        assert {k for k, _, _ in perms} <= set(state)
        for name, dim, perm in perms:
            state[name].copy_(state[name].index_select(dim, perm))
        torch.testing.assert_close(supernet(x, space.largest()), before)
    importance = supernet.stages[0][0].conv3.conv.weight.abs().sum((0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])


def test_operators_only_use_configured_choices():
    space = make()
    rng = random.Random(0)
    c = space.config
    for _ in range(50):
        a = space.mutate(space.sample(rng), rng, 0.5)
        assert all(d in c["depths"] for d in a.depth) and all(m in c["width_mults"] for m in a.width)
        assert all(e in c["expands"] for es in a.expand for e in es)


def test_bad_arch_json_gives_a_one_line_message():
    space = make()
    good = space.to_json(space.largest())
    for bad in ({**good, "width": [0.7, 1.0, 1.0, 1.0]}, {**good, "depth": [4, 4, 4, 3]}, {**good, "width": [True] * 4}):
        with pytest.raises(RegnasError) as exc:
            space.from_json(bad)
        assert "\n" not in str(exc.value) and "resnet" in str(exc.value)
