"""PCT focal distillation: the loss itself, and fine-tuning towards the old model on digits (its flip numbers: benchmarks/nfr_family.py)."""

import pytest
import torch
import torch.nn.functional as F

from regnas.data import to_float
from regnas.errors import RegnasError
from regnas.evaluate import Evaluator, predict
from regnas.io import sha256_json
from regnas.pct import (
    PCTConfig,
    finetune_seconds,
    focal_distillation,
    focal_term,
    joint_finetune,
    joint_loss,
    pct_family,
    pct_finetune,
)


def test_focal_distillation_weights_samples_the_old_model_got_right():
    torch.manual_seed(0)
    new, old = torch.randn(4, 3), torch.randn(4, 3)
    labels = old.argmax(1).clone()
    labels[2:] = (labels[2:] + 1) % 3  # the old model is right on samples 0 and 1 only
    cfg = PCTConfig(alpha=1.0, beta=5.0, weight=2.0)
    d = 0.5 * (new - old).pow(2).sum(1)
    expected = F.cross_entropy(new, labels) + 2.0 * (torch.tensor([6.0, 6.0, 1.0, 1.0]) * d).mean()
    assert focal_distillation(new, old, labels, cfg).item() == pytest.approx(expected.item(), rel=1e-6)
    assert focal_distillation(old, old, labels, cfg).item() == pytest.approx(F.cross_entropy(old, labels).item(), rel=1e-6)
    kl = focal_distillation(new, old, labels, PCTConfig(kind="kl", temperature=2.0))
    assert kl.item() > F.cross_entropy(new, labels).item()


def test_unknown_distillation_kind_is_a_one_line_error():
    with pytest.raises(RegnasError, match="unknown focal distillation 'l2'; use lm"):
        PCTConfig(kind="l2")
    with pytest.raises(RegnasError, match="at least one model"):
        pct_family([], None)


def logit_gap(new, old, x):
    """Mean squared logit distance, the quantity focal distillation pulls down."""
    x = to_float(x)
    with torch.no_grad():
        return (new(x) - old(x)).pow(2).sum(1).mean().item()


def test_pct_pulls_the_new_model_towards_the_old_one_and_leaves_the_old_untouched(digits_supernet, digits):
    net, _ = digits_supernet
    ev = Evaluator(net, digits)
    old, new = ev.subnet(net.space.smallest()), ev.subnet(net.space.largest())
    old_state = sha256_json({k: v.tolist() for k, v in old.state_dict().items()})
    x, labels = torch.cat([digits["val"].x, digits["test"].x]), torch.cat([digits["val"].y, digits["test"].y]).numpy()
    p_old = predict(old, x)
    family = pct_family([old, new], digits, PCTConfig(epochs=1))
    pct = family[1]
    plain = pct_finetune(new, old, digits, PCTConfig(epochs=1, weight=0.0))
    assert logit_gap(pct, old, x) < 0.5 * logit_gap(plain, old, x)
    assert (predict(pct, x) == labels).mean() > (p_old == labels).mean()  # still better than the old model
    assert sha256_json({k: v.tolist() for k, v in old.state_dict().items()}) == old_state
    assert family[0] is old


def test_joint_loss_is_the_first_members_labels_and_each_later_ones_pull_back():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (16,))
    logits = [torch.randn(16, 10, requires_grad=True) for _ in range(3)]
    cfg = PCTConfig(weight=0.5, ensemble=0.0)
    joint_loss(logits, labels, cfg).backward()
    expected = [F.cross_entropy(logits[0], labels)]
    expected += [focal_distillation(logits[i], logits[i - 1].detach(), labels, cfg) for i in (1, 2)]
    for i in range(3):
        z = logits[i].detach().requires_grad_()
        (F.cross_entropy(z, labels) if i == 0 else focal_distillation(z, logits[i - 1].detach(), labels, cfg)).backward()
        assert torch.allclose(logits[i].grad, z.grad, atol=1e-6)
    assert joint_loss(logits, labels, cfg).item() == pytest.approx(sum(e.item() for e in expected), rel=1e-6)
    assert focal_term(logits[0], logits[0], labels, cfg).item() == 0.0


def test_the_ensemble_term_pulls_every_member_towards_the_members_mean():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (16,))
    logits = [torch.randn(16, 10, requires_grad=True) for _ in range(3)]
    plain, pulled = PCTConfig(ensemble=0.0), PCTConfig(ensemble=2.0)
    mean = torch.stack(logits).mean(0).detach()
    gap = sum(0.5 * (z - mean).pow(2).sum(1).mean() for z in logits)
    assert joint_loss(logits, labels, pulled).item() == pytest.approx(joint_loss(logits, labels, plain).item() + 2.0 * gap.item(), rel=1e-6)
    grads = []
    for cfg in (plain, pulled):
        for z in logits:
            z.grad = None
        joint_loss(logits, labels, cfg).backward()
        grads.append([z.grad.clone() for z in logits])
    for z, g0, g1 in zip(logits, *grads):  # the mean is the step's fixed target: d/dz of ½‖z − z̄‖²/n is (z − z̄)/n
        assert torch.allclose(g1 - g0, 2.0 * (z.detach() - mean) / len(labels), atol=1e-6)


def test_joint_finetune_pulls_each_member_towards_the_one_before_and_leaves_the_supernet(digits_supernet, digits):
    net, _ = digits_supernet
    archs = [net.space.smallest(), net.space.largest()]
    before = sha256_json({k: v.tolist() for k, v in net.model.state_dict().items()})
    x = torch.cat([digits["val"].x, digits["test"].x])
    pulled = joint_finetune(net, archs, digits, PCTConfig(epochs=1))
    plain = joint_finetune(net, archs, digits, PCTConfig(epochs=1, weight=0.0, ensemble=0.0))
    mean_only = joint_finetune(net, archs, digits, PCTConfig(epochs=1, weight=0.0))
    assert all(p.is_contiguous() for m in pulled for p in m.parameters())  # trained channels-last, handed back as exporters need
    assert logit_gap(pulled[1], pulled[0], x) < 0.5 * logit_gap(plain[1], plain[0], x)
    assert logit_gap(mean_only[1], mean_only[0], x) < 0.5 * logit_gap(plain[1], plain[0], x)
    assert sha256_json({k: v.tolist() for k, v in net.model.state_dict().items()}) == before
    with pytest.raises(RegnasError, match="needs 2 or more members"):
        joint_finetune(net, archs[:1], digits)


def test_the_finetune_estimate_grows_with_its_schedule(digits_supernet, digits):
    net, _ = digits_supernet
    archs = [net.space.smallest(), net.space.largest()]
    one = finetune_seconds(net.model, archs, digits, PCTConfig(epochs=1), "joint")
    assert 0 < one < finetune_seconds(net.model, archs, digits, PCTConfig(epochs=20), "joint")  # 20x the steps: no load swamps that
