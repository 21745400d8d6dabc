import pytest
import torch
import torch.nn.functional as F

from regnas.nn import FOLD_CHUNK, ConvBN, DynamicConv2d, count_macs, crop_to, depthwise_conv, fold_bn, make_divisible


def test_crop_is_prefix_on_channels_and_centre_on_kernels():
    t = torch.arange(4 * 3 * 5 * 5).reshape(4, 3, 5, 5)
    c = crop_to(t, (2, 1, 3, 3))
    assert torch.equal(c, t[:2, :1, 1:4, 1:4])
    v = torch.arange(10)
    assert torch.equal(crop_to(v, (4,)), v[:4])
    with pytest.raises(ValueError):
        crop_to(v, (11,))


@pytest.mark.parametrize("h,k,stride", [(8, 3, 1), (7, 5, 2), (4, 3, 1)])
def test_elastic_depthwise_kernel_is_the_centre_crop_and_trains_only_it(h, k, stride):
    torch.manual_seed(0)
    conv = DynamicConv2d(6, 6, 7, stride, depthwise=True).to(memory_format=torch.channels_last)
    x = torch.randn(3, 4, h, h).contiguous(memory_format=torch.channels_last)
    out = conv(x, kernel=k)
    ref = F.conv2d(x, conv.weight[:4, :, (7 - k) // 2 : (7 + k) // 2, (7 - k) // 2 : (7 + k) // 2], None, stride, k // 2, groups=4)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    touched = conv.weight.grad.abs().sum((1,)) > 0
    off = (7 - k) // 2
    expected = torch.zeros(6, 7, 7, dtype=torch.bool)
    expected[:4, off : off + k, off : off + k] = True
    assert torch.equal(touched, expected)


@pytest.mark.parametrize(
    "n,h,k,stride",
    [
        (3, 8, 7, 1),
        (3, 7, 7, 1),
        (3, 4, 7, 1),
        (3, 2, 7, 1),
        (3, 2, 3, 1),
        (3, 4, 5, 2),
        (3, 3, 3, 2),
        (3, 14, 7, 1),
        (3, 14, 7, 2),
        (3, 7, 5, 2),
    ]
    + [(FOLD_CHUNK + 5, 6, 5, 1)],  # more images than one folded chunk
)
def test_depthwise_conv_equals_conv2d_forward_and_backward(n, h, k, stride):
    torch.manual_seed(0)
    x = torch.randn(n, 6, h, h).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, 1, k, k, requires_grad=True)
    ref = F.conv2d(x, w, None, stride, k // 2, groups=6)
    gx, gw = torch.autograd.grad(ref.square().sum(), (x, w))
    out = depthwise_conv(x, w, stride)
    hx, hw = torch.autograd.grad(out.square().sum(), (x, w))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(hx, gx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hw, gw, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("k,h", [(3, 8), (5, 8), (7, 2)])
def test_depthwise_conv_trains_under_bf16_autocast_as_conv2d_does(k, h):
    """Under autocast the convolution runs in bf16: its backward must get the tensors it ran on (a float input
    saved beside a bf16 output gradient failed with "expected scalar type BFloat16")."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, h, h, requires_grad=True)
    w = torch.randn(6, 1, k, k, requires_grad=True)
    grads = []
    for conv in (depthwise_conv, lambda x, w, s: F.conv2d(x, w, None, s, k // 2, groups=6)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x, w, 1)
        assert out.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(out.float().square().sum(), (x, w)))
    (hx, hw), (gx, gw) = grads
    assert hx.dtype == hw.dtype == torch.float32
    torch.testing.assert_close(hx, gx, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hw, gw, rtol=2e-2, atol=0.05 * gw.abs().max().item())


def test_count_macs_of_a_known_network():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))
    assert count_macs(net, (2, 5, 5)) == 4 * 5 * 5 * 2 * 9 + 100 * 3


def test_make_divisible_is_monotone():
    values = [make_divisible(v) for v in range(1, 400)]
    assert values == sorted(values) and all(v % 8 == 0 for v in values)


@pytest.mark.parametrize("inplace", [False, True])
def test_folding_batch_norm_keeps_the_function_and_copies_unless_in_place(inplace):
    torch.manual_seed(0)
    net = torch.nn.Sequential(ConvBN(3, 8, 3, act="relu"), ConvBN(8, 4, 1))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(5, 3, 6, 6)
    want = net.eval()(x)
    folded = fold_bn(net, inplace=inplace)
    torch.testing.assert_close(folded(x), want, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert (folded is net) == inplace
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) != inplace
