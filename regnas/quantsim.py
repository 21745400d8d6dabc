"""int8 simulated in PyTorch, one unit at a time: which units' quantization moves a network's predictions most.

Flip-aware quantization keeps the most sensitive units of an int8 artifact in float, so it first ranks them.
Quantizing each unit alone with the exporter and running the result costs seconds per unit (a PT2E prepare and
convert, or an ONNX Runtime quantization and session), minutes for a network of 60 units. The ranking only has
to order the units; the exporter's own artifacts then judge every configuration on val. So here each unit is
quantized the way static int8 runtimes do, in the fp32 network itself: its weights per output channel
(symmetric, 8 bits) and its output per tensor (asymmetric, 8 bits, over the range calibration images reach),
and the network's scores on the ranking images are compared with its float scores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def _weight_layers(module: nn.Module) -> list[nn.Module]:
    """The layers whose weights quantizing `module` quantizes: itself if it is one, else its direct convolutions
    (a convolution with its batch norm and activation is one unit)."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        return [module]
    return [c for c in module.children() if isinstance(c, nn.Conv2d | nn.Linear)]


def _fake_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8, back in float."""
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (w / scale.view(shape)).round().clamp(-127, 127) * scale.view(shape)


def _fake_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per-tensor asymmetric uint8 over [low, high] (widened to hold 0), back in float."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255
    zero = round(-low / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale


def output_ranges(model: nn.Module, names: list[str], calib: torch.Tensor) -> dict[str, tuple[float, float]]:
    """The smallest and largest output value of each named module over the calibration images."""
    modules = dict(model.named_modules())
    ranges: dict[str, list[float]] = {n: [np.inf, -np.inf] for n in names}

    def record(name: str):
        def hook(_m, _inp, out):
            r = ranges[name]
            r[0], r[1] = min(r[0], float(out.min())), max(r[1], float(out.max()))

        return hook

    handles = [modules[n].register_forward_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            model(calib)
    finally:
        for h in handles:
            h.remove()
    return {n: (lo, hi) for n, (lo, hi) in ranges.items()}


@contextlib.contextmanager
def quantized(module: nn.Module, low: float, high: float) -> Iterator[None]:
    """`module` computing as static int8 would: fake-quantized weights and output, restored on exit."""
    saved = [(layer, layer.weight.data) for layer in _weight_layers(module)]
    for layer, w in saved:
        layer.weight.data = _fake_weight(w)
    handle = module.register_forward_hook(lambda _m, _inp, out: _fake_activation(out, low, high))
    try:
        yield
    finally:
        handle.remove()
        for layer, w in saved:
            layer.weight.data = w


def unit_sensitivity(model: nn.Module, units: dict[str, str], calib: np.ndarray, x: np.ndarray) -> list[dict]:
    """For each unit (its name → the module it quantizes), how far quantizing it alone moves the scores on `x`:
    changed top-1 labels, then mean |Δscore|; most sensitive first. `calib` sets the activation ranges."""
    model = model.eval()
    calib_t, x_t = torch.from_numpy(np.ascontiguousarray(calib)), torch.from_numpy(np.ascontiguousarray(x))
    ranges = output_ranges(model, sorted(set(units.values())), calib_t)
    modules = dict(model.named_modules())
    with torch.no_grad():
        ref = model(x_t)
        out = []
        for unit, name in units.items():
            with quantized(modules[name], *ranges[name]):
                scores = model(x_t)
            changed = int((scores.argmax(1) != ref.argmax(1)).sum())
            out.append({"unit": unit, "changed": changed, "drift": float((scores - ref).abs().mean())})
    return sorted(out, key=lambda r: (-r["changed"], -r["drift"]))
