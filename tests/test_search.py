from dataclasses import replace

import pytest

from regnas.errors import RegnasError
from regnas.evaluate import Evaluator
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
    first = evolve(evaluator, budget, PRESETS["R2"], None, CFG, seed=0)
    assert space.flops(first.best.arch) <= budget and first.best.nfr is None
    second = evolve(evaluator, large, PRESETS["R2"], first.best.arch, CFG, seed=0)
    assert space.contains(second.best.arch, first.best.arch)
    assert second.best.nfr is not None and 0 <= second.best.nfr <= 1
    again = evolve(evaluator, budget, PRESETS["R2"], None, CFG, seed=0)
    assert again.best.arch == first.best.arch


def test_members_keep_to_the_accuracy_only_member_within_the_slack(evaluator):
    """R1 alone would pick the smallest superset (fewest flips, whatever its top-1); the anchor's floor holds it to
    the accuracy-only member's val top-1 less the slack, or as near as any candidate came."""
    space = evaluator.space
    large = space.flops(space.largest())
    budgets = [("a", int(0.2 * large)), ("b", large)]
    anchors = search_family(evaluator, budgets, PRESETS["R0"], CFG, seed=4, nested=False)
    top = float((evaluator.predictions(space.largest()) == evaluator.labels()).mean())
    anchors[1] = replace(anchors[1], arch=space.largest(), val_top1=top)  # an anchor R1 alone cannot reach
    unheld = SearchConfig(population=6, generations=2, top1_slack=-1)
    free = search_family(evaluator, budgets, PRESETS["R1"], unheld, seed=4, anchors=anchors)
    held = search_family(evaluator, budgets, PRESETS["R1"], CFG, seed=4, anchors=anchors)
    assert free[1].val_top1_floor is None and held[1].val_top1_floor == pytest.approx(top - 0.005)
    assert free[1].val_top1 < held[1].val_top1_floor  # the floor binds here: without it R1 falls below
    assert held[1].val_top1 >= held[1].val_top1_floor or held[1].val_top1 == max(c[1] for c in held[1].candidates)
    assert held[1].val_top1 > free[1].val_top1
    for member in (free[1], held[1]):  # the margin is the reward's lead among the candidates that met the floor
        assert member.val_margin is None or member.val_margin["runner_up_gap"] >= 0
    assert space.contains(held[1].arch, held[0].arch)


@pytest.mark.parametrize("population", [1, 2, 3])
def test_tiny_populations_still_search_within_the_budget(evaluator, population):
    space = evaluator.space
    budget = space.flops(space.largest()) // 2
    result = evolve(evaluator, budget, PRESETS["R2"], None, SearchConfig(population=population, generations=3))
    assert space.flops(result.best.arch) <= budget and result.evaluated >= 1


def test_impossible_budget_is_a_regnas_error(evaluator):
    with pytest.raises(RegnasError, match="raise the budget"):
        evolve(evaluator, 10, PRESETS["R0"], None, CFG)


def test_family_is_nested_with_literal_weight_sharing(evaluator):
    space = evaluator.space
    large = space.flops(space.largest())
    members = search_family(evaluator, [("a", int(0.3 * large)), ("b", int(0.6 * large))], PRESETS["R2"], CFG, seed=1)
    assert [m.target for m in members] == ["a", "b"]
    a, b = members
    pair = nesting(space, "a", a.arch, evaluator.subnet(a.arch), "b", b.arch, evaluator.subnet(b.arch))
    assert pair.contains and pair.literal and pair.shared_of_smaller == 1.0
    assert 0 < pair.shared_weight_fraction < 1


def test_flips_against_every_earlier_member_count_what_any_of_them_got_right(evaluator):
    import numpy as np

    from regnas.flips import nfr, nfr_any

    labels = np.array([0, 1, 2, 3])
    a, b, new = np.array([0, 9, 2, 9]), np.array([9, 1, 2, 9]), np.array([9, 9, 2, 3])
    assert nfr_any([a, b], new, labels) == 0.5 and nfr(b, new, labels) == 0.25  # sample 0 is a's, sample 1 is b's
    space = evaluator.space
    large = space.flops(space.largest())
    budgets = [("a", int(0.3 * large)), ("b", int(0.6 * large)), ("c", large)]
    members = search_family(evaluator, budgets, parse_reward("R2", against="all"), CFG, seed=2)
    first, second, third = (evaluator.predictions(m.arch) for m in members)
    assert members[2].val_nfr_vs_prev == pytest.approx(nfr_any([first, second], third, evaluator.labels()))


def test_per_sample_rewards_average_to_the_reward():
    import numpy as np

    correct = np.array([True, True, False, True, False])
    flipped = np.array([False, False, True, False, False])
    reward = Reward(1.0, 2.0)
    assert reward.per_sample(correct, flipped).mean() == pytest.approx(reward(correct.mean(), flipped.mean()))
    assert reward.per_sample(correct, None).mean() == pytest.approx(reward(correct.mean(), None))


def test_paired_margin_tells_a_real_lead_from_val_noise():
    import numpy as np

    from regnas.search import Candidate, margin, paired_difference

    base = (np.random.default_rng(0).random(4000) < 0.9).astype(float)
    noisy = base.copy()  # 20 samples lost, 20 others gained: the same mean, no real difference
    noisy[np.flatnonzero(base == 1)[:20]], noisy[np.flatnonzero(base == 0)[:20]] = 0.0, 1.0
    worse = base.copy()
    worse[np.flatnonzero(base == 1)[:200]] = 0.0  # 5 points worse on the same samples
    mean, low, high = paired_difference(base, worse)
    assert mean == pytest.approx(0.05) and 0 < low < mean < high
    archs = ("best", "noise", "worse")
    samples = dict(zip(archs, (base, noisy, worse)))
    ranked = [Candidate(a, 0, float(samples[a].mean()), None, float(samples[a].mean())) for a in archs]
    m = margin(ranked, samples)
    assert m.tied == 1 and m.interval[0] <= 0 <= m.interval[1]
    assert margin(ranked[:1], samples) is None


def test_family_members_record_their_val_margin(evaluator):
    space = evaluator.space
    members = search_family(evaluator, [("a", int(0.5 * space.flops(space.largest())))], PRESETS["R2"], CFG, seed=3)
    m = members[0].val_margin
    low, high = m["interval"]
    assert m["runner_up_gap"] >= 0  # the winner leads on val by its reward, so by the mean paired difference
    assert m["runner_up_gap"] == pytest.approx((low + high) / 2)  # a symmetric interval around that lead
    assert low > 0 or m["tied"] >= 1  # a runner-up val cannot tell apart is counted
    assert m["tied"] < members[0].evaluated


def test_a_screen_ranks_on_part_of_val_and_the_finalists_choose_on_all_of_it(evaluator):
    space = evaluator.space
    budget = space.flops(space.largest()) // 2
    cfg = SearchConfig(population=6, generations=3, screen=100, finalists=3)
    result = evolve(evaluator, budget, PRESETS["R2"], None, cfg, seed=0)
    labels = evaluator.labels("val")
    assert len(labels) > 100 and len(evaluator.labels("val:100")) == 100
    assert set(evaluator.labels("val:100")) == set(labels)  # a seeded sample of val, not its first (sorted) rows
    assert result.finalists == 3
    chosen = (evaluator.predictions(result.best.arch, "val") == labels).mean()
    assert result.best.top1 == pytest.approx(chosen)  # the chosen candidate's numbers are on all of val
    on_all = [c for c in result.candidates if (evaluator.predictions(c.arch, "val") == labels).mean() == pytest.approx(c.top1)]
    assert len(on_all) >= 3 and result.best in on_all
    assert max(on_all, key=lambda c: (c.reward, c.top1)).reward == result.best.reward
    assert evolve(evaluator, budget, PRESETS["R2"], None, cfg, seed=0).best.arch == result.best.arch
