"""train/losses.py against the formulas on a few numbers written out by hand (an independent computation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pointad.train.loss_terms import TERM_NAMES, LossTerms, parse_loss_terms
from pointad.train.losses import (
    dice_loss,
    focal_loss,
    global_2d_loss,
    global_3d_loss,
    hybrid_loss,
    local_2d_loss,
    local_3d_loss,
)


def _close(actual, expected, atol=1e-6):
    actual = float(torch.as_tensor(actual).detach())
    assert abs(actual - expected) <= atol, f"{actual} vs {expected} (difference {abs(actual - expected):.3g})"


def _dice(x, y):
    """1 - (2 sum xy + 1) / (sum x + sum y + 1) on plain lists."""
    return 1 - (2 * sum(a * b for a, b in zip(x, y)) + 1) / (sum(x) + sum(y) + 1)


def _focal(p_anomalous, labels, gamma):
    """Mean of -(1 - p_t)^gamma log p_t on plain lists; p_t the probability of the true class."""
    terms = []
    for p, y in zip(p_anomalous, labels):
        pt = p if y == 1 else 1 - p
        terms.append(-((1 - pt) ** gamma) * math.log(pt))
    return sum(terms) / len(terms)


# --- dice ---------------------------------------------------------------------------------------------

def test_dice_three_numbers():
    # x = (0.9, 0.2, 0.6), y = (1, 0, 1): 1 - (2*1.5 + 1) / (1.7 + 2 + 1) = 1 - 4/4.7
    _close(dice_loss(torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1, 0, 1])), 1 - 4 / 4.7)


def test_dice_mask_and_leading_axes():
    pred = torch.tensor([[0.9, 0.2, 0.6, 0.5], [0.1, 0.4, 0.8, 0.3]])
    target = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]])
    mask = torch.tensor([[True, True, True, False], [True, False, True, True]])
    first = 1 - (2 * (0.9 + 0.6) + 1) / ((0.9 + 0.2 + 0.6) + 2 + 1)
    second = 1 - (2 * 0.8 + 1) / ((0.1 + 0.8 + 0.3) + 1 + 1)
    _close(dice_loss(pred, target, mask), (first + second) / 2)
    assert math.isclose(_dice([0.9, 0.2, 0.6], [1, 0, 1]), first)


def test_dice_perfect_prediction_is_zero():
    target = (torch.rand(3, 500, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    assert dice_loss(target.clone(), target) < 1e-2
    assert dice_loss(torch.zeros(4), torch.zeros(4)) == 0  # nothing predicted, nothing there


# --- focal --------------------------------------------------------------------------------------------

def test_focal_three_numbers():
    p_a = [0.8, 0.3, 0.6]
    labels = [1, 0, 0]
    probs = torch.tensor([[[1 - p for p in p_a], p_a]])  # (1, 2, 3)
    # by hand, gamma 2: p_t = 0.8, 0.7, 0.4
    expected = -(0.2 ** 2 * math.log(0.8) + 0.3 ** 2 * math.log(0.7) + 0.6 ** 2 * math.log(0.4)) / 3
    _close(focal_loss(probs, torch.tensor([labels])), expected)
    assert math.isclose(_focal(p_a, labels, 2), expected)
    _close(focal_loss(probs, torch.tensor([labels]), gamma=1), _focal(p_a, labels, 1))


def test_focal_gamma_zero_is_cross_entropy_on_maps():
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 2, 5, 5, generator=gen), dim=1)
    target = torch.randint(0, 2, (2, 5, 5), generator=gen)
    _close(focal_loss(probs, target, gamma=0), F.nll_loss(probs.log(), target))
    assert focal_loss(probs, target) < focal_loss(probs, target, gamma=0)


def test_focal_survives_zero_probability():
    probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    loss = focal_loss(probs, torch.tensor([[1, 1]]))  # first entry: p_t = 0
    assert torch.isfinite(loss)
    _close(loss, -math.log(1e-6) * (1 - 1e-6) ** 2 / 2, atol=1e-4)
    loss.backward()
    assert torch.isfinite(probs.grad).all()


def test_focal_rejects_mismatched_target():
    with pytest.raises(ValueError, match="disagree"):
        focal_loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))


# --- the four terms -----------------------------------------------------------------------------------

def test_global_3d_loss_hand_case():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    _close(global_3d_loss(probs, torch.tensor([1, 1])), -(math.log(0.3) + math.log(0.8)) / 2)
    _close(global_3d_loss(probs, torch.tensor([0, 1])), -(math.log(0.7) + math.log(0.8)) / 2)


def test_local_3d_loss_hand_case_ignores_padding():
    # one sample, four points, the last is padding (its values must not matter)
    s_a = [0.9, 0.2, 0.6, 0.99]
    maps = torch.tensor([[[1 - a for a in s_a], s_a]])  # (1, 2, 4)
    labels = torch.tensor([[1, 0, 1, 0]])
    valid = torch.tensor([[True, True, True, False]])
    expected = _dice([0.9, 0.2, 0.6], [1, 0, 1]) + _dice([0.1, 0.8, 0.4], [0, 1, 0])
    _close(local_3d_loss(maps, labels, valid), expected)
    perfect = torch.stack([1 - labels.float(), labels.float()], dim=1)
    _close(local_3d_loss(perfect, labels, valid), 0.0)  # (2*2 + 1) / (2 + 2 + 1) and (2*1 + 1) / (1 + 1 + 1)


def test_global_2d_loss_hand_case():
    probs = torch.tensor([[[0.6, 0.4], [0.1, 0.9]], [[0.8, 0.2], [0.5, 0.5]]])  # (B=2, V=2, 2)
    masks = torch.zeros(2, 2, 3, 3, dtype=torch.uint8)
    masks[0, 0, 1, 2] = 1  # sample 0 view 0 anomalous
    masks[1, 1, 0, 0] = 1  # sample 1 view 1 anomalous
    expected = -(math.log(0.4) + math.log(0.1) + math.log(0.8) + math.log(0.5)) / 4
    _close(global_2d_loss(probs, masks), expected)


def test_local_2d_loss_hand_case():
    # B = 1, V = 2 views of 1x2 pixels
    s_a = [[0.7, 0.1], [0.4, 0.9]]
    masks = [[1, 0], [0, 0]]
    maps = torch.tensor([[[[[1 - a for a in view]], [view]] for view in s_a]])  # (1, 2, 2, 1, 2)
    assert maps.shape == (1, 2, 2, 1, 2)
    per_view = []
    for a, m in zip(s_a, masks):
        n = [1 - x for x in a]
        per_view.append(_focal(a, m, 2) + _dice(a, m) + _dice(n, [1 - y for y in m]))
    expected = sum(per_view) / 2
    _close(local_2d_loss(maps, torch.tensor([[masks[0]], [masks[1]]]).reshape(1, 2, 1, 2)), expected)


# --- hybrid loss and parsing --------------------------------------------------------------------------

def _inputs(seed=0, batch=2, views=3, points=20, size=4):
    gen = torch.Generator().manual_seed(seed)
    view_probs = torch.softmax(torch.randn(batch, views, 2, generator=gen), -1).requires_grad_(True)
    maps2d = torch.softmax(torch.randn(batch, views, 2, size, size, generator=gen), 2).requires_grad_(True)
    point_maps = torch.softmax(torch.randn(batch, 2, points, generator=gen), 1).requires_grad_(True)
    return dict(view_probs=view_probs, labels=torch.tensor([0, 1]), point_maps=point_maps,
                point_labels=(torch.rand(batch, points, generator=gen) < 0.3).to(torch.uint8),
                valid=torch.rand(batch, points, generator=gen) < 0.9, maps2d=maps2d,
                view_masks=(torch.rand(batch, views, size, size, generator=gen) < 0.2).to(torch.uint8))


def test_hybrid_loss_sums_the_four_terms():
    inputs = _inputs()
    total, values = hybrid_loss("all", **inputs)
    assert list(values) == list(TERM_NAMES)
    separate = {
        "3d_global": global_3d_loss(inputs["view_probs"].mean(1), inputs["labels"]),
        "3d_local": local_3d_loss(inputs["point_maps"], inputs["point_labels"], inputs["valid"]),
        "2d_global": global_2d_loss(inputs["view_probs"], inputs["view_masks"]),
        "2d_local": local_2d_loss(inputs["maps2d"], inputs["view_masks"]),
    }
    for name, value in separate.items():
        _close(values[name], value.item())
    _close(total, sum(v.item() for v in separate.values()), atol=1e-5)
    total.backward()
    for key in ("view_probs", "maps2d", "point_maps"):
        assert inputs[key].grad is not None and inputs[key].grad.abs().sum() > 0, key


def test_hybrid_loss_term_switched_off_is_excluded():
    inputs = _inputs(1)
    full, values = hybrid_loss(LossTerms(), **inputs)
    total, partial = hybrid_loss({"3d_global": True, "3d_local": True, "2d_global": False, "2d_local": True},
                                 **inputs)
    assert "2d_global" not in partial and list(partial) == ["3d_global", "3d_local", "2d_local"]
    _close(total, full.item() - values["2d_global"].item(), atol=1e-5)
    # only what the enabled terms need must be given
    only = {k: inputs[k] for k in ("maps2d", "view_masks")}
    total, values = hybrid_loss("2d_local", **only)
    assert list(values) == ["2d_local"]
    _close(total, local_2d_loss(inputs["maps2d"], inputs["view_masks"]).item())


def test_hybrid_loss_names_missing_input():
    with pytest.raises(ValueError, match="'3d_local' needs point_labels, valid"):
        hybrid_loss("3d_local", point_maps=torch.zeros(1, 2, 3))


def test_parse_loss_terms():
    assert parse_loss_terms("all") == LossTerms()
    assert parse_loss_terms("all").names() == TERM_NAMES
    terms = parse_loss_terms(" 2d_local , 3d_global")
    assert terms.names() == ("3d_global", "2d_local")
    assert "2d_local" in terms and "3d_local" not in terms
    assert str(terms) == "3d_global,2d_local" and str(parse_loss_terms("all")) == "all"
    assert parse_loss_terms(str(terms)) == terms


@pytest.mark.parametrize("text, name", [("3d_global,2d_lokal", "2d_lokal"), ("", ""), ("all,3d_local", "all"),
                                        ("3D_GLOBAL", "3D_GLOBAL")])
def test_parse_loss_terms_names_unknown_term(text, name):
    with pytest.raises(ValueError, match=f"unknown loss term '{name}'"):
        parse_loss_terms(text)


def test_loss_terms_refuses_unknown_and_empty():
    with pytest.raises(ValueError, match="unknown loss term 'focal'"):
        hybrid_loss({"focal": True}, view_probs=torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="no loss term enabled"):
        hybrid_loss({"3d_global": False})
