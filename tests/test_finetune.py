"""The family fine-tune: the joint loss, and members pulled towards each other inside the supernet on digits."""

import pytest
import torch
import torch.nn.functional as F

from regnas.distill import DistillConfig, deployed_term, focal_distillation, focal_term
from regnas.distributed import state_digest
from regnas.errors import RegnasError
from regnas.finetune import finetune_seconds, joint_finetune, joint_loss
from tests.conftest import logit_gap


def test_joint_loss_is_the_first_members_labels_and_each_later_ones_pull_back():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (16,))
    logits = [torch.randn(16, 10, requires_grad=True) for _ in range(3)]
    cfg = DistillConfig(weight=0.5, ensemble=0.0)
    joint_loss(logits, labels, cfg).backward()
    expected = [F.cross_entropy(logits[0], labels)]
    expected += [focal_distillation(logits[i], logits[i - 1].detach(), labels, cfg) for i in (1, 2)]
    for i in range(3):
        z = logits[i].detach().requires_grad_()
        (F.cross_entropy(z, labels) if i == 0 else focal_distillation(z, logits[i - 1].detach(), labels, cfg)).backward()
        assert torch.allclose(logits[i].grad, z.grad, atol=1e-6)
    assert joint_loss(logits, labels, cfg).item() == pytest.approx(sum(e.item() for e in expected), rel=1e-6)
    assert focal_term(logits[0], logits[0], labels, cfg).item() == 0.0


def test_a_deployed_model_pulls_its_member_where_it_is_right_by_its_logits_or_its_predicted_classes():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (16,))
    logits = [torch.randn(16, 10) for _ in range(2)]
    cfg = DistillConfig(weight=0.5, ensemble=0.0, deployed_weight=0.2)
    teacher = torch.randn(16, 10)
    teacher[:8] = 10 * F.one_hot(labels[:8], 10)  # right on half the images
    right = (teacher.argmax(1) == labels).float()
    plain = joint_loss(logits, labels, cfg).item()
    pulled = joint_loss(logits, labels, cfg, [None, teacher]).item()
    gap = (cfg.beta * right * 0.5 * (logits[1] - teacher).pow(2).sum(1)).mean()  # α = 0: nothing where it is wrong
    assert pulled == pytest.approx(plain + 0.2 * gap.item(), rel=1e-6)
    classes = teacher.argmax(1)  # only its predictions saved: the same focus on a cross-entropy towards them
    expected = (cfg.beta * right * F.cross_entropy(logits[0], classes, reduction="none")).mean()
    assert deployed_term(logits[0], classes, labels, cfg).item() == pytest.approx(expected.item(), rel=1e-6)
    assert joint_loss(logits, labels, cfg, [classes, None]).item() == pytest.approx(plain + 0.2 * expected.item(), rel=1e-6)
    copying = DistillConfig(deployed_alpha=1.0)  # PCT's α = 1 would copy its mistakes too
    assert deployed_term(logits[0], classes, labels, copying).item() > deployed_term(logits[0], classes, labels, cfg).item()


def test_the_ensemble_term_pulls_every_member_towards_the_members_mean():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (16,))
    logits = [torch.randn(16, 10, requires_grad=True) for _ in range(3)]
    plain, pulled = DistillConfig(ensemble=0.0), DistillConfig(ensemble=2.0)
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
    before = state_digest(net.model)
    x = torch.cat([digits["val"].x, digits["test"].x])
    pulled = joint_finetune(net, archs, digits, DistillConfig(epochs=1))
    plain = joint_finetune(net, archs, digits, DistillConfig(epochs=1, weight=0.0, ensemble=0.0))
    mean_only = joint_finetune(net, archs, digits, DistillConfig(epochs=1, weight=0.0))
    assert all(p.is_contiguous() for m in pulled for p in m.parameters())  # trained channels-last, handed back as exporters need
    assert logit_gap(pulled[1], pulled[0], x) < 0.5 * logit_gap(plain[1], plain[0], x)
    assert logit_gap(mean_only[1], mean_only[0], x) < 0.5 * logit_gap(plain[1], plain[0], x)
    assert state_digest(net.model) == before
    with pytest.raises(RegnasError, match="needs 2 or more members"):
        joint_finetune(net, archs[:1], digits)
    old = digits["train"].y.clone()  # a deployed model's predicted classes, but no price for the pull towards them
    with pytest.raises(RegnasError, match="pull towards deployed models has no weight"):
        joint_finetune(net, archs, digits, DistillConfig(epochs=1), [None, old])


def test_the_finetune_estimate_grows_with_its_schedule(digits_supernet, digits):
    net, _ = digits_supernet
    archs = [net.space.smallest(), net.space.largest()]
    one = finetune_seconds(net.model, archs, digits, DistillConfig(epochs=1), "joint")
    assert 0 < one < finetune_seconds(net.model, archs, digits, DistillConfig(epochs=20), "joint")  # 20x the steps: no load swamps that
