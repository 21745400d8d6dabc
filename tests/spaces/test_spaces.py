"""Every registered space honours the nesting contract literally, on many random pairs."""

import random

import pytest
import torch

from regnas.errors import RegnasError
from regnas.nn import count_macs, crop_to
from regnas.spaces import create_space, space_class, space_names

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 13, 17)]


def make(name, shape=(1, 8, 8), classes=10):
    return create_space(name, space_class(name).default_config(shape, classes))


def randomised_supernet(space, seed=0):
    """A supernet with random weights, norm affines and BN statistics, so equalities are not vacuous."""
    torch.manual_seed(seed)
    net = space.build_supernet()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():  # zero-initialised residual branches
                p.normal_(std=0.1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.normal_()
                m.bias.normal_()
    return net.eval()


def nested_pair(space, rng):
    small = space.sample(rng)
    return space.sample(rng, lower=small), small


@pytest.mark.parametrize("name", space_names())
def test_extracted_weights_are_literal_slices_on_many_pairs(name):
    space = make(name)
    supernet = randomised_supernet(space)
    rng = random.Random(0)
    for _ in range(40):
        big_arch, small_arch = nested_pair(space, rng)
        assert space.contains(big_arch, small_arch)
        big = space.extract(supernet, big_arch).state_dict()
        small = space.extract(supernet, small_arch).state_dict()
        big_params = dict(space.extract(supernet, big_arch).named_parameters())
        small_params = dict(space.extract(supernet, small_arch).named_parameters())
        assert set(small_params) <= set(big_params)
        for key, p in small_params.items():
            assert torch.equal(p, crop_to(big_params[key], p.shape)), key
        assert set(small) <= set(big)


@pytest.mark.parametrize("name", space_names())
@pytest.mark.parametrize("shape", SHAPES)
def test_supernet_and_extracted_subnet_compute_the_same_function(name, shape):
    space = make(name, shape)
    supernet = randomised_supernet(space, seed=1)
    rng = random.Random(1)
    x = torch.randn(3, *shape)
    for _ in range(4):
        arch = space.sample(rng)
        with torch.no_grad():
            torch.testing.assert_close(supernet(x, arch), space.extract(supernet, arch).eval()(x))


@pytest.mark.parametrize("name", space_names())
@pytest.mark.parametrize("shape", SHAPES)
def test_flops_and_params_equal_counts_on_the_extracted_network(name, shape):
    space = make(name, shape)
    rng = random.Random(2)
    for arch in [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(5)]:
        net = space.build_subnet(arch)
        assert space.flops(arch) == count_macs(net, shape)
        assert space.params(arch) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", space_names())
def test_contains_is_a_partial_order_bounded_by_smallest_and_largest(name):
    space = make(name)
    rng = random.Random(3)
    archs = [space.sample(rng) for _ in range(30)]
    for a in archs:
        assert space.contains(a, a)
        assert space.contains(space.largest(), a) and space.contains(a, space.smallest())
        for b in archs:
            if a != b and space.contains(a, b):
                assert not space.contains(b, a)
                assert space.flops(a) > space.flops(b) and space.params(a) > space.params(b)


@pytest.mark.parametrize("name", space_names())
def test_union_is_the_smallest_arch_containing_both(name):
    space = make(name)
    rng = random.Random(5)
    for _ in range(30):
        a, b = space.sample(rng), space.sample(rng)
        u = space.union(a, b)
        assert space.contains(u, a) and space.contains(u, b) and space.union(b, a) == u
        assert space.union(a, a) == a and space.union(u, a) == u
        for _ in range(40):  # one choice down anywhere loses a or b
            smaller = space.shrink(u, rng)
            assert smaller is None or not (space.contains(smaller, a) and space.contains(smaller, b))


@pytest.mark.parametrize("name", space_names())
def test_median_is_the_middle_by_flops_of_its_draw_and_the_same_every_time(name):
    space = make(name)
    rng = random.Random(7)
    drawn = {space.sample(rng) for _ in range(21)}
    median = space.median(21, 7)
    assert median in drawn and median == space.median(21, 7)
    below = sum(space.flops(a) < space.flops(median) for a in drawn)
    above = sum(space.flops(a) > space.flops(median) for a in drawn)
    assert below <= len(drawn) // 2 and above <= len(drawn) - len(drawn) // 2 - 1
    assert space.flops(space.smallest()) < space.flops(median) < space.flops(space.largest())


@pytest.mark.parametrize("name", space_names())
def test_operators_stay_supersets_of_the_lower_bound(name):
    """Sample, mutate and crossover stay ⊇ lower; shrinking lowers one gene by one choice per step and ends at lower."""
    space = make(name)
    rng = random.Random(4)
    for _ in range(30):
        lower = space.sample(rng)
        a, b = space.sample(rng, lower), space.sample(rng, lower)
        assert space.contains(a, lower) and space.contains(b, lower)
        assert space.contains(space.mutate(a, rng, 0.5, lower), lower)
        assert space.contains(space.crossover(a, b, rng), lower)
        steps = 0
        while (shrunk := space.shrink(a, rng, lower)) is not None:
            assert space.contains(a, shrunk) and space.contains(shrunk, lower) and shrunk != a
            changed = [i for i, (x, y) in enumerate(zip(space.encode(a), space.encode(shrunk))) if x != y]
            assert len(changed) == 1 or space.encode(shrunk)[: space.n_stages] != space.encode(a)[: space.n_stages]  # or a depth step
            a, steps = shrunk, steps + 1
            assert steps < 200
        assert a == lower and space.genome(space.make(space.genome(lower))) == space.genome(lower)
    assert space.shrink(space.smallest(), rng) is None


@pytest.mark.parametrize("name", space_names())
def test_json_round_trip_encoding_and_validation(name):
    space = make(name)
    rng = random.Random(5)
    lengths = set()
    for _ in range(20):
        arch = space.sample(rng)
        assert space.from_json(space.to_json(arch)) == arch
        lengths.add(len(space.encode(arch)))
    assert len(lengths) == 1
    with pytest.raises(RegnasError):
        space.from_json({"depth": [9]})
    with pytest.raises(RegnasError):
        space.from_json("not an arch")


def test_unknown_space_is_a_regnas_error():
    with pytest.raises(RegnasError, match="unknown search space"):
        space_class("nope")


@pytest.mark.parametrize("name", space_names())
def test_all_units_cover_every_arch_and_build(name):
    space = make(name)
    every = set(space.all_units())
    assert len(every) == len(space.all_units())
    rng = random.Random(0)
    for arch in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(60))]:
        assert set(space.units(arch)) <= every
    for unit in space.all_units():  # every unit runs on the input shape it declares
        module, shape = space.build_unit(unit)
        with torch.no_grad():
            assert module.eval()(torch.zeros(2, *shape)).shape[0] == 2


def test_the_default_space_follows_the_input_size():
    from regnas.spaces import default_space

    assert default_space((1, 8, 8)) == "mbv3"  # digits: the built-in LUTs are mbv3's at 8x8
    assert default_space((1, 28, 28)) == default_space((3, 32, 32)) == "resnet"
    assert default_space((3, 64, 12)) == "mbv3"  # the smaller side decides
