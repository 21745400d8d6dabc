"""int8 simulated in PyTorch: quantization that rounds as int8 does, undone on exit, and a ranking of units."""

import numpy as np
import torch

from regnas.data import to_float
from regnas.exporters import ExportJob, create_exporter
from regnas.exporters.onnx import preprocessed_compute_nodes
from regnas.quantsim import _fake_activation, _fake_weight, quantized, unit_sensitivity


def test_fake_quantization_rounds_to_256_levels_within_half_a_step():
    w = torch.randn(8, 4, 3, 3)
    q = _fake_weight(w)
    step = w.abs().flatten(1).amax(1) / 127
    assert ((q - w).abs().flatten(1).amax(1) <= step / 2 + 1e-6).all()
    assert all(len(torch.unique(q[c])) <= 255 for c in range(8))
    x = torch.linspace(-1, 3, 1000)
    a = _fake_activation(x, -1.0, 3.0)
    assert len(torch.unique(a)) <= 256 and (a - x).abs().max() <= 4 / 255 / 2 + 1e-6
    assert float(_fake_activation(torch.tensor([9.0]), -1.0, 3.0)) <= 3.0 + 1e-6  # clipped to the calibrated range


def test_a_quantized_unit_is_restored_and_the_ranking_covers_every_unit(digits_supernet, digits, tmp_path):
    net, _ = digits_supernet
    model = net.space.extract(net.model, net.space.largest()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with quantized(conv, -1.0, 1.0):
        assert not torch.equal(conv.weight, before[next(k for k, v in model.named_parameters() if v is conv.weight)])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    job = ExportJob(model, digits.input_shape, digits["calib"].x.numpy(), tmp_path, tmp_path)
    exporter = create_exporter("onnx")
    units = preprocessed_compute_nodes(job.onnx())
    modules = exporter.unit_modules(job, units)
    assert len(modules) == len(units)  # every ONNX compute node maps to the module it was traced from
    x = to_float(digits["val"].x.numpy()[:64])  # 64 images keep the 70 forward passes short
    ranking = unit_sensitivity(model, modules, to_float(digits["calib"].x.numpy()[:64]), x)
    assert sorted(r["unit"] for r in ranking) == sorted(units)
    keys = [(-r["changed"], -r["drift"]) for r in ranking]
    assert keys == sorted(keys) and ranking[0]["drift"] > 0 and all(r["changed"] <= len(x) for r in ranking)
    assert np.isfinite([r["drift"] for r in ranking]).all()
