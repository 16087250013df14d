"""The loss: class-weight math, and dummy label slots that never receive probability mass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kubetune.config import ClassWeightsConfig
from kubetune.train.loss import ClassificationLoss, class_weights, class_weights_for, mask_dummy_logits


def test_class_weights_are_inverse_frequency_normalised_to_mean_one():
    # mean count 100/3: raw weights 10/3, 5/6, 2/3 (sum 29/6), scaled by 3 / (29/6) = 18/29
    weights = class_weights([10, 40, 50, 0, 0], num_real_labels=3, alpha=1.0, min_weight=0.1, max_weight=10.0)
    assert weights == pytest.approx([60 / 29, 15 / 29, 12 / 29, 0.0, 0.0])


def test_class_weights_power_alpha():
    weights = class_weights([10, 40], num_real_labels=2, alpha=0.5, min_weight=0.1, max_weight=10.0)
    # raw (25/10)**0.5 and (25/40)**0.5 = sqrt(2.5) and sqrt(0.625); their ratio is 2
    assert weights[0] / weights[1] == pytest.approx(2.0)
    assert sum(weights) / 2 == pytest.approx(1.0)


def test_class_weights_are_clipped_before_normalising():
    # raw 667, 0.667, 0.667 → clipped to 4, 0.8, 0.8 (sum 5.6) → scaled by 3 / 5.6
    weights = class_weights([1, 1000, 1000], num_real_labels=3, alpha=1.0, min_weight=0.8, max_weight=4.0)
    assert weights == pytest.approx([15 / 7, 3 / 7, 3 / 7])


def test_alpha_zero_means_no_weighting():
    assert class_weights([1, 50, 500, 0], num_real_labels=3, alpha=0.0, min_weight=0.1, max_weight=10.0) == pytest.approx(
        [1.0, 1.0, 1.0, 0.0]
    )


def test_real_class_missing_from_train_gets_the_max_weight():
    weights = class_weights([0, 10, 10], num_real_labels=3, alpha=1.0, min_weight=0.1, max_weight=5.0)
    # raw: max (5), 20/3/10 = 2/3, 2/3 → sum 19/3 → scaled by 9/19
    assert weights == pytest.approx([45 / 19, 6 / 19, 6 / 19])


def test_class_weights_from_a_label_column():
    config = ClassWeightsConfig(enable=True, alpha=1.0, min=0.1, max=10.0)
    labels = [0] * 10 + [1] * 40 + [2] * 50
    assert class_weights_for(labels, num_slots=5, num_real_labels=3, config=config) == pytest.approx(
        [60 / 29, 15 / 29, 12 / 29, 0.0, 0.0]
    )


def test_dummy_slots_get_exactly_zero_probability():
    logits = torch.tensor([[0.1, 0.2, 0.3, 50.0, 80.0], [1.0, -1.0, 0.0, 1e4, 1e4]])
    probabilities = mask_dummy_logits(logits, num_real_labels=3).softmax(-1)
    assert probabilities[:, 3:].eq(0).all()
    assert probabilities[:, :3].sum(-1) == pytest.approx(torch.ones(2))
    assert probabilities.argmax(-1).lt(3).all()


def test_masking_is_a_no_op_without_dummy_slots():
    logits = torch.randn(4, 3)
    assert torch.equal(mask_dummy_logits(logits, num_real_labels=3), logits)


def test_loss_equals_cross_entropy_over_the_real_classes_only():
    logits = torch.tensor([[2.0, 0.5, -1.0, 9.0, 9.0], [0.0, 1.0, 3.0, 9.0, 9.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    loss = ClassificationLoss(num_real_labels=3)({"logits": logits}, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits[:, :3], labels).item())
    loss.backward()
    assert logits.grad[:, 3:].eq(0).all()  # the dummy slots' head rows never learn


def test_weighted_loss_is_normalised_by_the_row_count():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, 1])
    weights = [0.5, 2.0, 1.5, 0.0]
    per_row = F.cross_entropy(logits[:, :3], labels, reduction="none") * torch.tensor([0.5, 1.5, 2.0])
    loss_fn = ClassificationLoss(num_real_labels=3, weights=weights)
    assert loss_fn({"logits": logits}, labels).item() == pytest.approx(per_row.mean().item())
    # With gradient accumulation the Trainer passes the rows of the whole accumulated batch.
    assert loss_fn({"logits": logits}, labels, num_items_in_batch=torch.tensor(6)).item() == pytest.approx(
        per_row.sum().item() / 6
    )


def test_label_smoothing_spreads_over_the_real_classes_only():
    logits = torch.tensor([[2.0, 0.5, -1.0, 9.0, 9.0], [0.0, 1.0, 3.0, 9.0, 9.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    loss = ClassificationLoss(num_real_labels=3, label_smoothing=0.1)({"logits": logits}, labels)
    log_probs = F.log_softmax(logits[:, :3], dim=-1)
    # (1 - 0.1) on the label plus 0.1 / 3 on each of the 3 real classes; nothing on the 2 dummy slots.
    targets = torch.full((2, 3), 0.1 / 3) + 0.9 * F.one_hot(labels, 3)
    assert loss.item() == pytest.approx(-(targets * log_probs).sum(-1).mean().item())
    assert loss.item() > ClassificationLoss(num_real_labels=3)({"logits": logits}, labels).item()
    loss.backward()
    assert logits.grad[:, 3:].eq(0).all()


def test_label_smoothing_with_class_weights_weights_each_row():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, 0.0]])
    labels = torch.tensor([0, 2])
    per_row = F.cross_entropy(logits[:, :3], labels, reduction="none", label_smoothing=0.2) * torch.tensor([0.5, 1.5])
    loss_fn = ClassificationLoss(num_real_labels=3, weights=[0.5, 2.0, 1.5, 0.0], label_smoothing=0.2)
    assert loss_fn({"logits": logits}, labels).item() == pytest.approx(per_row.mean().item())
