"""The PCT baseline: each model fine-tuned towards the one before it on digits (its flip numbers: benchmarks/nfr_family.py)."""

import pytest
import torch

from regnas.distill import DistillConfig
from regnas.distributed import state_digest
from regnas.errors import RegnasError
from regnas.evaluate import Evaluator, predict
from regnas.pct import pct_family, pct_finetune
from tests.conftest import logit_gap


def test_pct_pulls_the_new_model_towards_the_old_one_and_leaves_the_old_untouched(digits_supernet, digits):
    net, _ = digits_supernet
    ev = Evaluator(net, digits)
    old, new = ev.subnet(net.space.smallest()), ev.subnet(net.space.largest())
    old_state = state_digest(old)
    x, labels = torch.cat([digits["val"].x, digits["test"].x]), torch.cat([digits["val"].y, digits["test"].y]).numpy()
    p_old = predict(old, x)
    family = pct_family([old, new], digits, DistillConfig(epochs=1))
    pct = family[1]
    plain = pct_finetune(new, old, digits, DistillConfig(epochs=1, weight=0.0))
    assert logit_gap(pct, old, x) < 0.5 * logit_gap(plain, old, x)
    assert (predict(pct, x) == labels).mean() > (p_old == labels).mean()  # still better than the old model
    assert state_digest(old) == old_state
    assert family[0] is old


def test_an_empty_family_is_a_one_line_error():
    with pytest.raises(RegnasError, match="at least one model"):
        pct_family([], None)
