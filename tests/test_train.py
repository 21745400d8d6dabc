import json

import pytest
import torch
from safetensors.torch import save_file

from regnas.data import Dataset, Split
from regnas.errors import RegnasError
from regnas.evaluate import predict, recalibrate_bn
from regnas.train import CHECKPOINT, TrainConfig, load_checkpoint, train_supernet


def small(digits, n=256):
    """The first n training images of digits, so training tests stay fast."""
    splits = dict(digits.splits)
    splits["train"] = Split(digits["train"].x[:n], digits["train"].y[:n], digits["train"].index[:n])
    return Dataset(digits.name + "-small", splits, digits.class_names, digits.digest + f"-{n}")


def quiet(_msg):
    pass


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


def test_changed_settings_retrain_from_scratch_deterministically(digits, tmp_path):
    data = small(digits)
    full = train_supernet(data, tmp_path / "full", TrainConfig(epochs=2, batch_size=64), log=quiet)
    train_supernet(data, tmp_path / "run", TrainConfig(epochs=1, batch_size=64), log=quiet)
    logs = []
    again = train_supernet(data, tmp_path / "run", TrainConfig(epochs=2, batch_size=64), log=logs.append)
    assert any("from scratch" in m for m in logs)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_interrupted_epoch_resumes_where_it_stopped(digits, tmp_path, monkeypatch):
    data = small(digits)
    cfg = TrainConfig(epochs=2, batch_size=64)
    reference = train_supernet(data, tmp_path / "ref", cfg, log=quiet)

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
        train_supernet(data, tmp_path / "run", cfg, log=quiet)
    logs = []
    resumed = train_supernet(data, tmp_path / "run", cfg, log=logs.append)
    assert any("resuming at epoch 2/2" in m for m in logs)
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_sort_channels_keeps_training_consistent(digits, tmp_path):
    net = train_supernet(small(digits, 128), tmp_path, TrainConfig(epochs=2, batch_size=64, sort_channels=True), log=quiet)
    assert net.meta["train"]["sort_channels"] is True and net.meta["epochs_done"] == 2


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
