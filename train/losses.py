"""Hybrid loss of PointAD, design §5: Dice, Focal and the four switchable terms (3D/2D x global/local).

Pure torch, arrays in and arrays out, batch-first; letters as in the store (B samples, V views,
P points, S pixels, N entries of a flattened map). Every two-class input is probabilities (not
logits) with channel 0 "normal" and channel 1 "anomalous", as made by `train.maps`. Labels and
masks are 0/1 (bool, integer or float). Each term is a mean over samples (and views), so its scale
does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .loss_terms import TERM_NAMES, LossTerms, parse_loss_terms
from .model.maps import sample_probability

EPS = 1e-6  # floor of a probability before its log: log(1e-6) = -13.8 bounds the loss of one entry


def dice_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return the mean soft Dice loss (scalar): 1 - (2 sum(x y) + 1) / (sum(x) + sum(y) + 1).

    pred: (..., N) float, x; target: (..., N) 0/1 (or soft), y; mask: (..., N) bool, only True
    entries enter the sums (None: all). The sums run over the last axis; the loss is averaged over
    the leading axes (one Dice per sample or per view). The smoothing 1 makes an empty target with an
    empty prediction a loss of 0.
    """
    target = target.to(pred.dtype)
    if mask is not None:
        keep = mask.bool()
        pred = torch.where(keep, pred, torch.zeros_like(pred))
        target = torch.where(keep, target, torch.zeros_like(target))
    overlap = (pred * target).sum(dim=-1)
    dice = (2 * overlap + 1) / (pred.sum(dim=-1) + target.sum(dim=-1) + 1)
    return (1 - dice).mean()


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Return the mean focal loss (scalar): mean over entries of -(1 - p_t)^gamma log(p_t).

    probs: (B, 2, S, S) or (B, 2, N) class probabilities [normal, anomalous] (any number of classes
    along axis 1 works); target: (B, S, S) or (B, N) class index per entry, 0 normal, 1 anomalous.
    p_t = probs[b, target, ...] is the probability of the true class, floored at EPS = 1e-6 before
    the log (no alpha weights, no label smoothing). With gamma = 0 this is the cross entropy of the
    probabilities, nll_loss(log(probs), target).
    """
    if probs.ndim != target.ndim + 1 or probs.shape[0] != target.shape[0] or probs.shape[2:] != target.shape[1:]:
        raise ValueError(f"probabilities {tuple(probs.shape)} and target {tuple(target.shape)} disagree")
    p_true = torch.gather(probs, 1, target.long().unsqueeze(1)).squeeze(1).clamp(min=EPS)
    return (-(1 - p_true).pow(gamma) * p_true.log()).mean()


def _cross_entropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean -log p[label] over rows of probs (M, 2); probabilities floored at EPS."""
    return F.nll_loss(probs.clamp(min=EPS).log(), labels.long())


def global_3d_loss(sample_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return L3d_global (scalar): cross entropy of the view-averaged probabilities and the sample label.

    sample_probs: (B, 2) mean over views of P(g, f_k) (`train.maps.sample_probability`), already
    probabilities, so the loss is nll_loss(log p, label) averaged over B; labels: (B,) 0/1.
    """
    return _cross_entropy(sample_probs, labels)


def local_3d_loss(point_maps: torch.Tensor, point_labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Return L3d_local (scalar): Dice(S3d_a, y) + Dice(S3d_n, 1 - y), sums over valid points only.

    point_maps: (B, 2, P) back-projected [S3d_n, S3d_a] (`train.maps.back_project`); point_labels:
    (B, P) 0/1 per point; valid: (B, P) bool, False for padding. Each Dice is per sample, then
    averaged over B.
    """
    labels = point_labels.to(point_maps.dtype)
    return (dice_loss(point_maps[:, 1], labels, valid)
            + dice_loss(point_maps[:, 0], 1 - labels, valid))


def global_2d_loss(view_probs: torch.Tensor, view_masks: torch.Tensor) -> torch.Tensor:
    """Return L2d_global (scalar): mean over views and samples of CE(P(g, f_k), max(mask_k)).

    view_probs: (B, V, 2) probabilities of each view's global feature; view_masks: (B, V, S, S)
    rendered ground truth 0/1: a view is anomalous when any of its pixels is (> 0.5).
    """
    view_labels = (view_masks.flatten(2) > 0.5).any(dim=-1)  # (B, V)
    return _cross_entropy(view_probs.reshape(-1, view_probs.shape[-1]), view_labels.reshape(-1))


def local_2d_loss(maps2d: torch.Tensor, view_masks: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Return L2d_local (scalar): mean over views of Focal([S_n, S_a], m) + Dice(S_a, m) + Dice(S_n, 1 - m).

    maps2d: (B, V, 2, S, S) per-view maps [S2d_n, S2d_a] (`train.maps.patch_maps` reshaped);
    view_masks: (B, V, S, S) rendered ground truth 0/1 (m_k, binarised at 0.5 for the focal target).
    Focal is averaged over pixels, each Dice taken per view; all three are averaged over B and V.
    """
    batch, views, channels = maps2d.shape[:3]
    maps = maps2d.reshape(batch * views, channels, -1)  # (B*V, 2, S*S)
    masks = view_masks.reshape(batch * views, -1)
    target = masks > 0.5
    soft = masks.to(maps.dtype)
    return (focal_loss(maps, target, gamma)
            + dice_loss(maps[:, 1], soft)
            + dice_loss(maps[:, 0], 1 - soft))


def _as_terms(terms) -> LossTerms:
    if isinstance(terms, LossTerms):
        return terms
    if isinstance(terms, str):
        return parse_loss_terms(terms)
    if isinstance(terms, Mapping):
        unknown = sorted(set(terms) - set(TERM_NAMES))
        if unknown:
            raise ValueError(f"unknown loss term {unknown[0]!r}; known: {', '.join(TERM_NAMES)}")
        return LossTerms(frozenset(name for name, on in terms.items() if on))
    raise TypeError(f"loss terms must be LossTerms, a dict of name -> bool or a string, got {type(terms).__name__}")


_INPUTS = {
    "3d_global": ("view_probs", "labels"),
    "3d_local": ("point_maps", "point_labels", "valid"),
    "2d_global": ("view_probs", "view_masks"),
    "2d_local": ("maps2d", "view_masks"),
}


def hybrid_loss(terms, *, view_probs=None, labels=None, point_maps=None, point_labels=None, valid=None,
                maps2d=None, view_masks=None, gamma: float = 2.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (total, {term name: value}): the sum of the enabled terms of the hybrid loss (design §5).

    terms: LossTerms, "all"/"3d_global,2d_local"-style string, or dict {name: bool} (missing = off).
    Inputs (only those of the enabled terms are needed; a missing one raises ValueError naming it):
    view_probs (B, V, 2) P(g, f_k) per view; labels (B,) sample labels; point_maps (B, 2, P)
    back-projected maps; point_labels (B, P); valid (B, P) bool; maps2d (B, V, 2, S, S) per-view maps;
    view_masks (B, V, S, S) rendered masks. "3d_global" uses the per-sample mean over views of
    view_probs. The terms have weight 1 each, as in the paper; the dict holds the enabled terms only,
    in the order of TERM_NAMES.
    """
    chosen = _as_terms(terms)
    given = dict(view_probs=view_probs, labels=labels, point_maps=point_maps, point_labels=point_labels,
                 valid=valid, maps2d=maps2d, view_masks=view_masks)
    for name in chosen.names():
        missing = [key for key in _INPUTS[name] if given[key] is None]
        if missing:
            raise ValueError(f"loss term {name!r} needs {', '.join(missing)}")

    values: dict[str, torch.Tensor] = {}
    for name in chosen.names():
        if name == "3d_global":
            values[name] = global_3d_loss(sample_probability(view_probs), labels)
        elif name == "3d_local":
            values[name] = local_3d_loss(point_maps, point_labels, valid)
        elif name == "2d_global":
            values[name] = global_2d_loss(view_probs, view_masks)
        else:
            values[name] = local_2d_loss(maps2d, view_masks, gamma)
    total = torch.stack(list(values.values())).sum()
    return total, values
