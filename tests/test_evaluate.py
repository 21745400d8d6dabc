"""Subnet evaluation: BN recalibration, batched channels-last prediction that leaves the network as it was, the cache."""

import numpy as np
import pytest
import torch

from regnas.data import to_float
from regnas.evaluate import Evaluator, predict, recalibrate_bn


@pytest.fixture(scope="module")
def evaluator(digits_supernet, digits):
    return Evaluator(digits_supernet[0], digits, calib_size=150)


def test_bn_recalibration_uses_exact_batch_statistics(evaluator, digits):
    net = evaluator.space.extract(evaluator.supernet.model, evaluator.space.smallest())
    x = digits["calib"].x[:100]
    recalibrate_bn(net, x)  # 100 images: one batch, so the statistics are exact
    conv_out = net.stem.conv(to_float(x))
    torch.testing.assert_close(net.stem.bn.running_mean, conv_out.mean((0, 2, 3)).detach(), rtol=1e-4, atol=1e-5)


def test_equal_batches_average_to_the_whole_set_mean(evaluator, digits):
    net = evaluator.space.extract(evaluator.supernet.model, evaluator.space.smallest())
    x = digits["calib"].x[:150]  # two equal batches of 75, not 128 + 22
    recalibrate_bn(net, x)
    torch.testing.assert_close(net.stem.bn.running_mean, net.stem.conv(to_float(x)).mean((0, 2, 3)).detach(), rtol=1e-4, atol=1e-5)


def test_prediction_is_batched_and_leaves_the_network_contiguous(evaluator, digits):
    net = evaluator.subnet(evaluator.space.largest())
    x = digits["test"].x
    pred = predict(net, x)
    with torch.no_grad():
        direct = net(to_float(x)).argmax(1).numpy()
    assert np.array_equal(pred, direct)
    assert all(p.is_contiguous() for p in net.parameters())  # exporters trace this module next (ExecuTorch rejects channels-last)


def test_predictions_are_cached_per_arch_and_split(evaluator, digits):
    arch = evaluator.space.smallest()
    first = evaluator.predictions(arch)
    assert first.shape == (len(digits["val"]),) and evaluator.predictions(arch) is first
    assert evaluator.predictions(arch, "test").shape == (len(digits["test"]),)
    assert evaluator.evaluated >= 2
