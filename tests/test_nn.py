import pytest
import torch
import torch.nn.functional as F

from regnas.nn import count_macs, crop_to, depthwise_conv, make_divisible


def test_crop_is_prefix_on_channels_and_centre_on_kernels():
    t = torch.arange(4 * 3 * 5 * 5).reshape(4, 3, 5, 5)
    c = crop_to(t, (2, 1, 3, 3))
    assert torch.equal(c, t[:2, :1, 1:4, 1:4])
    v = torch.arange(10)
    assert torch.equal(crop_to(v, (4,)), v[:4])
    with pytest.raises(ValueError):
        crop_to(v, (11,))


@pytest.mark.parametrize("h,k,stride", [(8, 7, 1), (7, 5, 2), (4, 7, 1), (2, 3, 1), (5, 3, 2)])
def test_matmul_depthwise_equals_conv2d_forward_and_backward(h, k, stride):
    torch.manual_seed(0)
    x = torch.randn(3, 6, h, h, requires_grad=True)
    w = torch.randn(6, 1, k, k, requires_grad=True)
    ref = F.conv2d(x, w, None, stride, k // 2, groups=6)
    gx, gw = torch.autograd.grad(ref.square().sum(), (x, w))
    out = depthwise_conv(x, w, stride)
    hx, hw = torch.autograd.grad(out.square().sum(), (x, w))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hx, gx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hw, gw, rtol=1e-4, atol=1e-3)


def test_count_macs_of_a_known_network():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))
    assert count_macs(net, (2, 5, 5)) == 4 * 5 * 5 * 2 * 9 + 100 * 3


def test_make_divisible_is_monotone():
    values = [make_divisible(v) for v in range(1, 400)]
    assert values == sorted(values) and all(v % 8 == 0 for v in values)
