import json
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from regnas.data import Dataset, Split, to_float
from regnas.errors import RegnasError
from regnas.evaluate import predict, recalibrate_bn
from regnas.spaces import create_space, space_class
from regnas.train import (
    CHECKPOINT,
    OPTIMIZER,
    Pace,
    Supernet,
    TrainConfig,
    _header,
    _permute_channels,
    load_checkpoint,
    recipe,
    sandwich,
    train_supernet,
)


def small(digits, n=256):
    """The first n training images of digits, so training tests stay fast."""
    splits = dict(digits.splits)
    splits["train"] = Split(digits["train"].x[:n], digits["train"].y[:n], digits["train"].index[:n])
    return Dataset(digits.name + "-small", splits, digits.class_names, digits.digest + f"-{n}")


def test_checkpoint_is_safetensors_with_metadata(digits_supernet, digits):
    net, out = digits_supernet
    meta = json.loads((out / "supernet.json").read_text())
    assert meta["space"] == "mbv3" and meta["data"]["digest"] == digits.digest and meta["epochs_done"] == 2
    loaded = load_checkpoint(out / CHECKPOINT, "mbv3", digits)
    for k, v in net.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])


def test_training_learns(digits_supernet, digits):
    net, _ = digits_supernet
    for arch in (net.space.largest(), net.space.smallest()):
        subnet = recalibrate_bn(net.space.extract(net.model, arch), digits["calib"].x)
        pred = predict(subnet, digits["val"].x)
        assert (pred == digits["val"].y.numpy()).mean() > 0.5  # ten classes: chance is 0.1


def test_changed_settings_retrain_from_scratch_deterministically(digits, tmp_path, caplog):
    data = small(digits)
    full = train_supernet(data, tmp_path / "full", TrainConfig(epochs=2, batch_size=64))
    train_supernet(data, tmp_path / "run", TrainConfig(epochs=1, batch_size=64))
    with caplog.at_level("INFO", logger="regnas"):
        again = train_supernet(data, tmp_path / "run", TrainConfig(epochs=2, batch_size=64))
    assert "from scratch" in caplog.text
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_interrupted_epoch_resumes_where_it_stopped(digits, tmp_path, monkeypatch, caplog):
    data = small(digits)
    cfg = TrainConfig(epochs=2, batch_size=64)
    reference = train_supernet(data, tmp_path / "ref", cfg)

    import regnas.train as train_mod

    calls = {"n": 0}
    real_save = train_mod._save_optimizer

    def save_then_die(*args):
        real_save(*args)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_optimizer", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(data, tmp_path / "run", cfg)
    with caplog.at_level("INFO", logger="regnas"):
        resumed = train_supernet(data, tmp_path / "run", cfg)
    assert "resuming at epoch 2/2" in caplog.text
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_channel_sorting_keeps_the_largest_function_and_moves_optimizer_moments_along(digits):
    torch.manual_seed(0)
    space = create_space("mbv3", space_class("mbv3").default_config(digits.input_shape, digits.num_classes))
    net = Supernet(space, space.build_supernet(), {})
    optimizer = torch.optim.AdamW(net.model.parameters(), lr=1e-3)
    x = to_float(digits["val"].x[:64])
    F.cross_entropy(net.model(x, space.largest()), digits["val"].y[:64]).backward()
    optimizer.step()
    net.model.eval()
    before = net.model(x, space.largest()).detach()
    name, dim, perm = space.channel_order(net.model)[0]
    param = dict(net.model.named_parameters())[name]
    moment = optimizer.state[param]["exp_avg"].clone()
    assert not torch.equal(perm, torch.arange(len(perm)))  # a real reordering, not the identity
    _permute_channels(net, optimizer)
    torch.testing.assert_close(net.model(x, space.largest()), before, rtol=1e-4, atol=1e-4)
    assert torch.equal(optimizer.state[param]["exp_avg"], moment.index_select(dim, perm))


def test_mismatching_or_corrupt_checkpoints_are_rejected(digits_supernet, digits, tmp_path):
    _, out = digits_supernet
    ckpt = out / CHECKPOINT
    with pytest.raises(RegnasError, match="'mbv3' supernet but --space resnet"):
        load_checkpoint(ckpt, "resnet", digits)
    fewer = Dataset("three", dict(digits.splits), ["a", "b", "c"], "x")
    with pytest.raises(RegnasError, match="10 classes"):
        load_checkpoint(ckpt, None, fewer)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(RegnasError, match="not a readable safetensors"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(RegnasError, match="no regnas metadata"):
        load_checkpoint(plain)
    with pytest.raises(RegnasError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_slower_run_refits_its_epochs_to_the_budget_never_beyond_the_plan():
    """The arithmetic of checking a run against its plan: 10 epochs of 1 s planned into 10 s (no warm start)."""
    cfg, pace = TrainConfig(epochs=10, warm_fraction=0.0), Pace(10, 1.0, 1.0, 10.0)
    assert pace.refit(cfg, 2, 2.0, 2.0) == 10  # on time
    assert pace.refit(cfg, 2, 1.0, 2.0) == 10  # faster than timed: never more than planned
    assert pace.refit(cfg, 2, 2.05, 2.0) == 10  # 2.5% slower: 10.25 s of 10, within the slack
    assert pace.refit(cfg, 2, 4.0, 2.0) == 5  # twice as slow: 4 s spent, 2 s an epoch for the 6 s left
    assert pace.refit(cfg, 2, 20.0, 2.0) == 3  # already over: one more epoch, the least a run can end with
    assert replace(pace, min_epochs=6).refit(cfg, 2, 4.0, 2.0) == 6  # a default budget's floor holds
    warm = TrainConfig(epochs=10, warm_fraction=0.5)  # 5 warm epochs of 1 s, then 2 s each (sandwich)
    assert Pace(10, 1.0, 2.0, 15.0).cost(warm, 10) == 15.0 and Pace(10, 1.0, 2.0, 15.0).cost(warm, 8) == 4 + 4 * 2.0


def test_a_run_slower_than_its_plan_trains_fewer_epochs_and_finishes_its_schedule(digits, tmp_path):
    data = small(digits, 128)
    cfg = TrainConfig(epochs=6, batch_size=64, seed=0)
    pace = Pace(6, 1e-4, 1e-4, 1e-3)  # every epoch takes far longer than this plan timed
    net = train_supernet(data, tmp_path, cfg, "mbv3", pace=pace)
    steps = len(data["train"]) // cfg.batch_size
    assert net.meta["epochs_done"] == net.meta["train"]["epochs"] == 3 == len(net.meta["history"])  # checked after epoch 2
    schedule = _header(tmp_path / OPTIMIZER, "optimizer state")["schedule"]
    assert schedule["total_steps"] == schedule["last_epoch"] == 3 * steps  # the one-cycle schedule ran to its end
    assert train_supernet(data, tmp_path, replace(cfg, epochs=3), "mbv3").meta["history"] == net.meta["history"]  # resumes as done


def test_epochs_are_planned_from_timed_steps_and_a_kept_plan_is_reused(digits, tmp_path, monkeypatch):
    import regnas.train as train_mod

    data = small(digits, 128)
    space = create_space("mbv3", space_class("mbv3").default_config(data.input_shape, data.num_classes))
    cfg = TrainConfig(epochs=1, batch_size=64)
    with monkeypatch.context() as m:  # the plan's arithmetic on given step times (0.1 s warm, 0.2 s sandwich; 10 steps an epoch)
        m.setattr(train_mod, "_step_timer", lambda *_: (lambda epoch: 0.1 * (1 + epoch), 10))
        assert train_mod.plan_epochs(data, space, cfg, 1e6).epochs == cfg.max_epochs  # a huge budget stops at the recipe's ceiling
        assert train_mod.plan_epochs(data, space, replace(cfg, max_epochs=13), 1e6).epochs == 13  # a space's recipe may move it
        pace = train_mod.plan_epochs(data, space, replace(cfg, warm_fraction=0.0), 7.0)
        assert pace == train_mod.Pace(3, 1.0, 2.0, 7.0)  # 2 s a sandwich epoch, with the timings it was planned from
        with pytest.raises(RegnasError, match="too small for one training epoch"):
            train_mod.plan_epochs(data, space, cfg, 1e-4)
        assert train_mod.plan_epochs(data, space, cfg, 1e-4, min_epochs=3).epochs == 3  # a default budget overruns rather than fails
    first, pace = train_mod.planned(tmp_path, data, space, replace(cfg, time_budget_min=0.5), 4.0)  # the run below trains what fits
    assert 1 <= first.epochs == pace.epochs <= cfg.max_epochs and first.time_budget_min == 0.5
    train_supernet(data, tmp_path, first)

    def no_timing(*_args, **_kw):
        raise AssertionError("a finished run's plan must be reused, not re-timed")

    monkeypatch.setattr(train_mod, "plan_epochs", no_timing)
    assert train_mod.planned(tmp_path, data, space, replace(cfg, time_budget_min=0.5), 4.0) == (first, None)


def test_the_precision_is_the_given_one_a_checkpoints_or_the_faster_one_here(digits, tmp_path, monkeypatch, caplog):
    import regnas.train as train_mod

    data = small(digits, 128)
    space = create_space("mbv3", space_class("mbv3").default_config(data.input_shape, data.num_classes))
    cfg = TrainConfig(epochs=1, batch_size=64)
    assert train_mod.settle_precision(tmp_path, data, space, replace(cfg, precision="bf16")).precision == "bf16"
    monkeypatch.setattr(train_mod, "native_bf16", lambda device: False)
    assert train_mod.settle_precision(tmp_path, data, space, cfg).precision == "fp32"  # emulated bf16 is never faster
    monkeypatch.setattr(train_mod, "native_bf16", lambda device: True)
    timed = {"fp32": 1.0, "bf16": 0.5}
    monkeypatch.setattr(train_mod, "_step_timer", lambda d, s, c, w: (lambda epoch, **_: timed[c.precision], 100))
    with caplog.at_level("DEBUG", logger="regnas"):
        assert train_mod.settle_precision(tmp_path, data, space, cfg).precision == "bf16"
    assert "1000 ms in fp32, 500 ms in bf16" in caplog.text
    timed["bf16"] = 0.95  # faster, but not by BF16_MIN_SPEEDUP
    assert train_mod.settle_precision(tmp_path, data, space, cfg).precision == "fp32"
    timed["bf16"] = 0.5  # twice as fast, but a run this short is not worth the trial: bf16 is not even timed
    short = int(train_mod.BF16_TRIAL_MIN_S / 100) - 1  # epochs of 100 one-second fp32 steps
    assert train_mod.settle_precision(tmp_path, data, space, cfg, epochs=short).precision == "fp32"
    assert train_mod.settle_precision(tmp_path, data, space, cfg, epochs=short + 2).precision == "bf16"
    train_supernet(data, tmp_path, replace(cfg, precision="bf16", time_budget_min=0.5))  # as a planned build records it
    assert train_mod.settle_precision(tmp_path, data, space, cfg).precision == "bf16"  # the checkpoint's, to resume it


def test_the_warm_start_takes_its_share_of_the_epochs_and_then_the_sandwich_runs(digits):
    from regnas.train import recipe, sandwich, warm_epochs

    assert [warm_epochs(TrainConfig(epochs=n)) for n in (1, 2, 5, 7, 20)] == [0, 1, 2, 3, 8]
    assert warm_epochs(TrainConfig(epochs=4, warm_fraction=0.0, sort_channels=True)) == 1  # sorting needs a trained largest
    assert [warm_epochs(TrainConfig(epochs=3, warm_fraction=f)) for f in (0.0, 0.1)] == [0, 1]  # a warm start is one epoch at least
    space = create_space("mbv3", space_class("mbv3").default_config(digits.input_shape, digits.num_classes))
    assert [warm_epochs(recipe(space, epochs=n)) for n in (2, 3, 7, 10)] == [1, 1, 1, 2]  # mbv3's teacher needs one warm epoch
    pick = sandwich(TrainConfig(epochs=5, random_subnets=2), space)
    rng = random.Random(0)
    assert pick(1, rng) == [space.largest()]
    late = pick(2, rng)
    assert late[:2] == [space.largest(), space.smallest()] and len(late) == 4


def test_training_without_a_space_takes_the_default_for_the_input_size(digits, tmp_path):
    data = small(digits, 64)
    up = {name: Split(F.interpolate(s.x.float(), size=(16, 16)).round().to(torch.uint8), s.y, s.index) for name, s in data.splits.items()}
    data16 = Dataset(data.name + "-16px", up, data.class_names, data.digest + "-16px")
    net = train_supernet(data16, tmp_path, TrainConfig(epochs=1, batch_size=32, seed=0))
    assert net.space.name == "resnet" and json.loads((tmp_path / "supernet.json").read_text())["space"] == "resnet"


def test_students_on_the_labels_follow_the_labels_not_the_teacher(digits):
    """At student_labels=1 a sandwich step's gradient is the sum of each subnet's own label loss."""
    from regnas.distributed import World
    from regnas.train import _Loop

    space = create_space("vit", space_class("vit").default_config(digits.input_shape, digits.num_classes))
    x, y = to_float(digits["val"].x[:32]), digits["val"].y[:32]
    archs = [space.largest(), space.smallest()]
    grads = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        loop = _Loop(space, space.build_supernet(), small(digits, 64), TrainConfig(epochs=1, student_labels=weight), World())
        loop.optimizer.step = loop.schedule.step = lambda: None  # keep the gradients of the step, not its update
        loop.step(x.contiguous(memory_format=torch.channels_last), y, archs)
        grads[weight] = {n: p.grad.clone() for n, p in loop.model.named_parameters() if p.grad is not None}
        if weight == 1.0:
            loop.model.zero_grad()
            for arch in archs:
                F.cross_entropy(loop.model(x, arch), y, label_smoothing=loop.cfg.label_smoothing).backward()
            for n, p in loop.model.named_parameters():
                if p.grad is not None:
                    torch.testing.assert_close(grads[1.0][n], p.grad, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(grads[0.0][n], grads[1.0][n]) for n in grads[1.0])  # distillation is a different loss


def test_a_checkpoint_from_before_a_new_setting_resumes_with_its_default(digits, tmp_path, caplog):
    from regnas.train import save_checkpoint

    data = small(digits, 128)
    cfg = TrainConfig(epochs=1, batch_size=64)
    net = train_supernet(data, tmp_path, cfg)
    del net.meta["train"]["student_labels"]  # as written before the setting existed
    save_checkpoint(tmp_path / CHECKPOINT, net)
    with caplog.at_level("INFO", logger="regnas"):
        again = train_supernet(data, tmp_path, cfg)
    assert "from scratch" not in caplog.text and "ignoring" not in caplog.text and again.meta["epochs_done"] == 1


def test_the_supernet_trains_at_its_multiple_of_a_standalone_nets_learning_rate(digits, tmp_path, monkeypatch):
    """The sandwich's peak learning rate is `supernet_lr_scale` × `lr`; a standalone twin keeps `lr`."""
    from regnas import train as train_mod

    peaks = []
    init = train_mod._Loop.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        peaks.append(self.optimizer.param_groups[0]["max_lr"])

    monkeypatch.setattr(train_mod._Loop, "__init__", spy)
    data = small(digits, 64)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, supernet_lr_scale=2.0)
    net = train_supernet(data, tmp_path, cfg)
    train_mod.train_standalone(data, net.space, net.space.smallest(), cfg)
    assert peaks == [pytest.approx(2e-3), pytest.approx(1e-3)]
    assert json.loads((tmp_path / "supernet.json").read_text())["train"]["supernet_lr_scale"] == 2.0  # part of the checkpoint


def test_random_subnets_aim_at_the_budgets_they_are_trained_for():
    space = create_space("resnet", space_class("resnet").default_config((3, 32, 32), 10))
    top = space.flops(space.largest())
    pick = sandwich(recipe(space, epochs=2, warm_fraction=0.0, subnet_flops=(0.3, 0.85)), space)
    rng = random.Random(0)
    drawn = [space.flops(pick(1, rng)[2]) / top for _ in range(40)]
    assert all(f <= 0.85 for f in drawn) and any(0.75 < f <= 0.85 for f in drawn) and any(0.2 < f <= 0.3 for f in drawn)
    assert len({round(f, 4) for f in drawn}) > 10  # shrunk at random, not one arch per budget
    uniform = sandwich(recipe(space, epochs=2, warm_fraction=0.0), space)
    assert sum(space.flops(uniform(1, rng)[2]) / top > 0.75 for _ in range(40)) < 5  # uniform draws rarely reach 75%


@pytest.mark.parametrize("total", [1, 2, 9, 10, 11, 40])
def test_the_one_cycle_schedule_runs_and_resumes_at_any_length(total):
    """Planned and refitted runs may have any number of steps: at exactly 10, PyTorch's 10% warm-up divided by zero."""
    from regnas.train import one_cycle

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    schedule = one_cycle(opt, 0.1, total)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total - 1):
        opt.step()
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) <= 0.1 + 1e-9 and (total < 3 or lrs[-1] < lrs[0])
    for done in range(total):  # a refitted run goes on at the step it reached
        one_cycle(opt, 0.1, total, done - 1)
