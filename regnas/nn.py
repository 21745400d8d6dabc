"""Elastic ops for weight-sharing supernets, their plain counterparts, and the slicing rule.

Nesting is literal: a subnet's tensor is `crop_to(supernet_tensor, subnet_shape)`, i.e. the
first channels on every dimension and, for 4-D convolution weights, the centre crop of the kernel.
Elastic and plain modules use the same attribute names, so one state-dict key names the same
weight in the supernet and in every subnet extracted from it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never down by more than 10% (MobileNet rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def crop_slices(full: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Index of the sub-tensor of shape `shape` inside a tensor of shape `full` (the nesting rule)."""
    if len(full) != len(shape) or any(s > f for s, f in zip(shape, full)):
        raise ValueError(f"cannot crop {tuple(full)} to {tuple(shape)}")
    idx = [slice(0, s) for s in shape]
    if len(shape) == 4:
        for d in (2, 3):
            off = (full[d] - shape[d]) // 2
            idx[d] = slice(off, off + shape[d])
    return tuple(idx)


def crop_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The slice of `t` that a nested subnet with a tensor of `shape` owns."""
    return t[crop_slices(tuple(t.shape), tuple(shape))]


class Hswish(nn.Hardswish):
    """Hard-swish, as in MobileNetV3."""


ACTIVATIONS = {"relu": nn.ReLU, "hswish": Hswish}


class ConvBN(nn.Sequential):
    """Convolution, batch norm and an optional activation; keys `conv.*`, `bn.*`."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: str | None = None):
        layers = OrderedDict(
            {
                "conv": nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                "bn": nn.BatchNorm2d(cout),
            }
        )
        if act:
            layers["act"] = ACTIVATIONS[act]()
        super().__init__(layers)


def fold_bn(net: nn.Module, inplace: bool = False) -> nn.Module:
    """`net` in eval mode with each `ConvBN`'s batch norm folded into its convolution: a copy, or `net` itself if `inplace`.

    The same function up to float rounding, about a sixth faster on CPU (measured: 5,000 Fashion-MNIST
    images through a median mbv3 subnet, 2.0 s to 1.7 s), and what ONNX export computes anyway. In place
    is for a network made only to be scored (a search candidate): copying an 8 px mbv3 subnet took 26 ms
    of its 130 ms evaluation.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = (net if inplace else copy.deepcopy(net)).eval()
    for m in net.modules():
        if isinstance(m, ConvBN) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return net


class SqueezeExcite(nn.Module):
    """Squeeze-excite with a hard-sigmoid gate (MobileNetV3)."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(F.relu(self.reduce(s)))
        return x * F.hardsigmoid(s)


def se_channels(channels: int) -> int:
    """Squeeze-excite bottleneck width for `channels` (monotone, so it nests)."""
    return make_divisible(channels / 4)


FOLD_CHUNK = 32
"""Images per folded depthwise weight-gradient convolution: 32 ran 2x faster than all 128 of a batch at once (cache)."""


def _depthwise_weight_grad(gy: torch.Tensor, x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """The weight gradient of a same-padded depthwise k×k convolution, computed as a depthwise convolution itself.

    Each (image, channel) pair becomes a group: its input map is convolved with its own output
    gradient as the kernel (dilated by the stride), which gives the k×k taps; the images are then
    summed. oneDNN runs that forward convolution up to 4x faster than its depthwise weight gradient
    (2 cores, batch 128, 7×7: 144 channels at 14×14 10 ms instead of 23, 384 at 4×4 2.3 instead of
    8.2; 5×5 at 14×14 about even).
    """
    n, c, h, w = x.shape
    oh, ow = gy.shape[-2:]
    x, gy = x.contiguous(), gy.contiguous()
    gw = torch.zeros(c, k, k, dtype=x.dtype, device=x.device)
    for i in range(0, n, FOLD_CHUNK):
        m = min(FOLD_CHUNK, n - i)
        taps = F.conv2d(x[i : i + m].reshape(1, m * c, h, w), gy[i : i + m].reshape(m * c, 1, oh, ow), None, 1, k // 2, stride, m * c)
        gw += taps.reshape(m, c, *taps.shape[-2:])[:, :, :k, :k].sum(0)
    return gw.unsqueeze(1)


class _Depthwise(torch.autograd.Function):
    """Same-padded depthwise convolution whose weight gradient is fast on CPU.

    PyTorch's depthwise weight gradient costs 4-20× its forward pass on CPU for 5×5 and 7×7 kernels
    (most on small maps); `_depthwise_weight_grad` computes the same numbers as a forward
    convolution, up to 4× faster. PyTorch's stays for 3×3 kernels, which it handles fast, and for maps
    no wider than the kernel's padding (2×2 under a 7×7), where the folded convolution would mostly
    multiply padding.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # saved as the convolution runs them, so backward's dtypes agree
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w = x.to(dtype), w.to(dtype)
        ctx.save_for_backward(x, w)
        ctx.stride = stride
        return F.conv2d(x, w, None, stride, w.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        c, k, s = x.shape[1], w.shape[-1], ctx.stride
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(gy, x, w, None, [s, s], [k // 2] * 2, [1, 1], False, [0, 0], c, [True, False, False])[
                0
            ]
        if ctx.needs_input_grad[1]:
            if k >= 5 and min(x.shape[-2:]) > k // 2:
                gw = _depthwise_weight_grad(gy, x, k, s)
            else:
                gw = torch.ops.aten.convolution_backward(
                    gy, x, w, None, [s, s], [k // 2] * 2, [1, 1], False, [0, 0], c, [False, True, False]
                )[1]
        return gx, gw, None


def depthwise_conv(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    """Same-padded depthwise convolution (`groups` = channels), fast to train on CPU at any map size."""
    if not torch.is_grad_enabled() or x.device.type != "cpu":
        return F.conv2d(x, w, None, stride, w.shape[-1] // 2, groups=x.shape[1])
    return _Depthwise.apply(x, w, stride)


class DynamicConv2d(nn.Module):
    """Convolution whose output channels and kernel size shrink to a prefix / centre crop."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int, stride: int = 1, depthwise: bool = False):
        super().__init__()
        self.depthwise = depthwise
        self.stride = stride
        shape = (max_out, 1 if depthwise else max_in, max_kernel, max_kernel)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def forward(self, x: torch.Tensor, out_channels: int | None = None, kernel: int | None = None) -> torch.Tensor:
        cin = x.shape[1]
        k = kernel or self.weight.shape[-1]
        if self.depthwise:
            return depthwise_conv(x, crop_to(self.weight, (cin, 1, k, k)), self.stride)
        cout = out_channels or self.weight.shape[0]
        return F.conv2d(x, crop_to(self.weight, (cout, cin, k, k)), None, self.stride, k // 2)


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the first `C` channels of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            self.momentum,
            self.eps,
        )


class DynamicConvBN(nn.Module):
    """Elastic counterpart of `ConvBN`, with the same state-dict keys."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int, stride: int = 1, depthwise: bool = False, act: str | None = None):
        super().__init__()
        self.conv = DynamicConv2d(max_in, max_out, max_kernel, stride, depthwise)
        self.bn = DynamicBatchNorm2d(max_out)
        self.act = ACTIVATIONS[act]() if act else nn.Identity()

    def forward(self, x: torch.Tensor, out_channels: int | None = None, kernel: int | None = None) -> torch.Tensor:
        return self.act(self.bn(self.conv(x, out_channels, kernel)))


class DynamicSqueezeExcite(nn.Module):
    """Elastic squeeze-excite: its bottleneck is `se_channels` of the active width."""

    def __init__(self, max_channels: int):
        super().__init__()
        mid = se_channels(max_channels)
        self.reduce = nn.Conv2d(max_channels, mid, 1)
        self.expand = nn.Conv2d(mid, max_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mid = se_channels(c)
        s = x.mean((2, 3), keepdim=True)
        s = F.conv2d(s, self.reduce.weight[:mid, :c], self.reduce.bias[:mid])
        s = F.conv2d(F.relu(s), self.expand.weight[:c, :mid], self.expand.bias[:c])
        return x * F.hardsigmoid(s)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of every convolution and linear layer for one input (the NAS 'FLOPs')."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


class ElasticPointwise(nn.Conv2d):
    """1×1 convolution (token-wise linear) running on the first input and output channels."""

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        cout = out_channels or self.out_channels
        return F.conv2d(x, self.weight[:cout, : x.shape[1]], self.bias[:cout])
