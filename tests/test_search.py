import pytest

from regnas.errors import RegnasError
from regnas.evaluate import Evaluator, recalibrate_bn
from regnas.family import nesting, search_family
from regnas.search import PRESETS, Reward, SearchConfig, evolve, parse_reward

CFG = SearchConfig(population=6, generations=2)


@pytest.fixture(scope="module")
def evaluator(digits_supernet, digits):
    return Evaluator(digits_supernet[0], digits, calib_size=150)


def test_reward_presets_and_custom():
    assert parse_reward("r2") == PRESETS["R2"] == Reward(1.0, 1.0, "R2")
    assert parse_reward("1,0.5") == Reward(1.0, 0.5)
    assert PRESETS["R2"](0.9, 0.05) == pytest.approx(0.85)
    assert PRESETS["R0"](0.9, 0.05) == 0.9 and PRESETS["R1"](0.9, 0.05) == -0.05
    with pytest.raises(RegnasError):
        parse_reward("R9")


def test_search_respects_budget_and_superset_constraint(evaluator):
    space = evaluator.space
    small, large = space.flops(space.smallest()), space.flops(space.largest())
    budget = small + (large - small) // 3
    first = evolve(evaluator, budget, PRESETS["R2"], None, CFG, seed=0, log=lambda _m: None)
    assert space.flops(first.best.arch) <= budget and first.best.nfr is None
    second = evolve(evaluator, large, PRESETS["R2"], first.best.arch, CFG, seed=0, log=lambda _m: None)
    assert space.contains(second.best.arch, first.best.arch)
    assert second.best.nfr is not None and 0 <= second.best.nfr <= 1
    again = evolve(evaluator, budget, PRESETS["R2"], None, CFG, seed=0, log=lambda _m: None)
    assert again.best.arch == first.best.arch


@pytest.mark.parametrize("population", [1, 2, 3])
def test_tiny_populations_still_search_within_the_budget(evaluator, population):
    space = evaluator.space
    budget = space.flops(space.largest()) // 2
    result = evolve(evaluator, budget, PRESETS["R2"], None, SearchConfig(population=population, generations=3), log=lambda _m: None)
    assert space.flops(result.best.arch) <= budget and result.evaluated >= 1


def test_impossible_budget_is_a_regnas_error(evaluator):
    with pytest.raises(RegnasError, match="raise the budget"):
        evolve(evaluator, 10, PRESETS["R0"], None, CFG, log=lambda _m: None)


def test_family_is_nested_with_literal_weight_sharing(evaluator):
    space = evaluator.space
    large = space.flops(space.largest())
    members = search_family(evaluator, [("a", int(0.3 * large)), ("b", int(0.6 * large))], PRESETS["R2"], CFG, seed=1, log=lambda _m: None)
    assert [m.target for m in members] == ["a", "b"]
    a, b = members
    pair = nesting(space, "a", a.arch, evaluator.subnet(a.arch), "b", b.arch, evaluator.subnet(b.arch))
    assert pair.contains and pair.literal and pair.shared_of_smaller == 1.0
    assert 0 < pair.shared_weight_fraction < 1


def test_bn_recalibration_uses_exact_batch_statistics(evaluator, digits):
    import torch

    net = evaluator.space.extract(evaluator.supernet.model, evaluator.space.smallest())
    x = digits["calib"].x[:100]
    recalibrate_bn(net, x, batch_size=100)
    stem_in = x
    conv_out = net.stem.conv(stem_in.contiguous())
    torch.testing.assert_close(net.stem.bn.running_mean, conv_out.mean((0, 2, 3)).detach(), rtol=1e-4, atol=1e-5)
    assert evaluator.predictions(space_arch := evaluator.space.smallest()).shape == (len(digits["val"]),)
    assert evaluator.predictions(space_arch) is evaluator.predictions(space_arch)
