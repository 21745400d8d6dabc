"""Focal distillation, the loss both the family fine-tune and the PCT baseline minimise."""

import pytest
import torch
import torch.nn.functional as F

from regnas.distill import DistillConfig, focal_distillation
from regnas.errors import RegnasError


def test_focal_distillation_weights_samples_the_old_model_got_right():
    torch.manual_seed(0)
    new, old = torch.randn(4, 3), torch.randn(4, 3)
    labels = old.argmax(1).clone()
    labels[2:] = (labels[2:] + 1) % 3  # the old model is right on samples 0 and 1 only
    cfg = DistillConfig(alpha=1.0, beta=5.0, weight=2.0)
    d = 0.5 * (new - old).pow(2).sum(1)
    expected = F.cross_entropy(new, labels) + 2.0 * (torch.tensor([6.0, 6.0, 1.0, 1.0]) * d).mean()
    assert focal_distillation(new, old, labels, cfg).item() == pytest.approx(expected.item(), rel=1e-6)
    assert focal_distillation(old, old, labels, cfg).item() == pytest.approx(F.cross_entropy(old, labels).item(), rel=1e-6)
    kl = focal_distillation(new, old, labels, DistillConfig(kind="kl", temperature=2.0))
    assert kl.item() > F.cross_entropy(new, labels).item()


def test_unknown_distillation_kind_is_a_one_line_error():
    with pytest.raises(RegnasError, match="unknown focal distillation 'l2'; use lm"):
        DistillConfig(kind="l2")


def test_the_mean_pull_follows_the_data_unless_given():
    """Photographs get no mean pull (it gave their ladder away); other data 3; a given weight stays."""
    assert DistillConfig().settled("photo").ensemble == 0.0
    assert DistillConfig().settled("glyph").ensemble == DistillConfig().settled(None).ensemble == 3.0
    assert DistillConfig(ensemble=1.5).settled("photo").ensemble == 1.5


def test_the_deployed_pull_is_priced_by_the_rewards_lambda3_unless_given():
    """One exchange rate for search and fine-tune: 0.02·λ3 (0.1 at the default λ3 = 5); a given weight stays."""
    assert DistillConfig().settled("glyph").deployed_weight is None  # no deployed models: nothing to price
    assert DistillConfig().settled("glyph", 5.0).deployed_weight == pytest.approx(0.1)
    assert DistillConfig().settled("glyph", 1.0).deployed_weight < DistillConfig().settled("glyph", 5.0).deployed_weight
    assert DistillConfig(deployed_weight=0.3).settled("glyph", 1.0).deployed_weight == 0.3
