"""The time plan: one planner and one default budget for `regnas train` and `regnas build`."""

import pytest

from regnas.distributed import World
from regnas.errors import RegnasError
from regnas.plan import DEFAULT_MIN_EPOCHS, TimeBudget, default_budget_min, default_budget_text, plan_training, train_config
from regnas.spaces import space_for


@pytest.fixture
def setup(digits, tmp_path):
    space = space_for(digits.input_shape, digits.num_classes, "mbv3")
    cfg = train_config(tmp_path, digits, space, World(), epochs=None, seed=0, precision="fp32")
    return tmp_path, digits, space, cfg


def test_the_default_budget_follows_the_data_and_the_help_says_so():
    assert default_budget_min("photo") == 60 and default_budget_min("glyph") == default_budget_min("none") == 40
    assert default_budget_text() == "60 for colour photos, 40 for other data"


def test_given_epochs_are_kept_and_nothing_is_timed(setup):
    out, data, space, cfg = setup
    planned, plan, pace = plan_training(out, data, space, cfg, World(), TimeBudget(epochs=5, minutes=0.001, reserve_s={"search": 1e6}))
    assert planned.epochs == 5 and plan == {} and pace is None
    assert cfg.batch_size == 32 and cfg.augment == "glyph"  # the digits' batch size and the glyphs' policy


def test_a_budget_the_later_stages_fill_is_refused_naming_them(setup):
    out, data, space, cfg = setup
    budget = TimeBudget(minutes=10, reserve_s={"search": 400.0, "finetune": 100.0, "export_and_check": 200.0})
    with pytest.raises(RegnasError, match=r"10 min leaves no time to train after search, fine-tune and export \(about 11.7 min"):
        plan_training(out, data, space, cfg, World(), budget)


def test_the_default_budget_trains_its_floor_where_the_later_stages_fill_it(setup):
    out, data, space, cfg = setup
    planned, plan, pace = plan_training(out, data, space, cfg, World(), TimeBudget(reserve_s={"search": 1e6}))
    assert planned.epochs == DEFAULT_MIN_EPOCHS == pace.epochs == pace.min_epochs and planned.time_budget_min == 40
    assert plan == {"budget": 2400.0, "train": 0.0, "search": 1e6}


@pytest.mark.parametrize("name", ["mbv3", "resnet"])
def test_the_fine_tune_is_timed_on_members_the_size_of_their_budgets(name):
    """Members use most of their budget, so the plan times them there, not at a median subnet (which ran 1.5x short)."""
    from regnas.search import Budget
    from regnas.workflow.build import budget_archs

    space = space_for((3, 32, 32), 10, name)
    large = space.flops(space.largest())
    budgets = [(f"t{i}", Budget.flops(space, int(f * large))) for i, f in enumerate((0.35, 0.7, 1.0))]
    costs = [space.flops(a) for a in budget_archs(space, budgets)]
    assert all(c <= b.limit for c, (_, b) in zip(costs, budgets))
    assert costs[0] > space.flops(space.smallest()) and costs[0] < costs[1] < costs[2] == large
    assert costs[1] > space.flops(space.median())
