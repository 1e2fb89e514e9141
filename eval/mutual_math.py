"""Training-free mutual scoring of a class's test samples (after MuSc, ICLR 2024): the math, arrays in, arrays out.

Normal patches find many similar patches in the other samples of their class; an anomalous patch stays
isolated. Written here from the method's description (no code of its release):
1. `aggregate_neighbourhoods`: each patch feature is replaced by the mean of the r x r window around it
   on the G x G patch grid, for several r (r = 1 keeps the patch), after a per-image standardisation of
   the feature map; the result is L2-normalised. Small r keeps small defects sharp, large r gives context.
2. `mutual_scores`: patch t of sample i gets, for every other sample j, the distance to its nearest
   patch in j; the patch's score is the mean of the smallest `fraction` of those N - 1 distances (an
   interval average: a normal patch is near in most samples, and the few anomalous samples that lack
   it do not count). Computed in blocks of query samples x reference samples, so memory stays bounded
   by `block_bytes` plus (query block, T, N) nearest distances, whatever N.
3. `rescore_by_neighbours`: sample scores, min-max normalised, averaged over each sample's k most
   similar samples (itself included) by global feature, weighted by the similarity, and averaged over
   several k: a sample whose look-alikes all score low is pulled down.
Letters: N samples of a class, T patches per sample, D feature dimension, G patch grid side, S pixels.
The method's shell (features of a class's rows, the store passes, PointAD's scoring tail) is `eval.mutual`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .options import BLOCK_BYTES, FRACTION, RESCORE_KS


def aggregate_neighbourhoods(patches: torch.Tensor, radius: int) -> torch.Tensor:
    """Return (N, G*G, D) float32 features: each patch the mean of its radius x radius window, L2-normalised.

    patches: (N, G*G, D) patch tokens of one layer, row-major over the G x G grid. Each image's map is
    first standardised over all its D x G x G values (zero mean, unit variance). The window is zero
    padded at the border and divided by radius**2 (every window has the same weight). radius: odd >= 1.
    """
    if radius < 1 or radius % 2 == 0:
        raise ValueError(f"neighbourhood radius must be odd and >= 1, got {radius}")
    n, tokens, dim = patches.shape
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} patch tokens do not form a square grid")
    grid = patches.float().transpose(1, 2).reshape(n, dim, side, side)
    grid = F.layer_norm(grid, grid.shape[1:])
    if radius > 1:
        grid = F.avg_pool2d(grid, radius, stride=1, padding=radius // 2, count_include_pad=True)
    return F.normalize(grid.reshape(n, dim, tokens).transpose(1, 2), dim=-1)


def kept_count(samples: int, fraction: float) -> int:
    """How many of the N - 1 nearest-patch distances the interval average keeps: floor(fraction (N - 1)), >= 1."""
    return max(1, int(fraction * (samples - 1)))


def block_sizes(tokens: int, samples: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Samples per block so one (block x T) x (block x T) float32 distance matrix fits in block_bytes (>= 1)."""
    return max(1, min(samples, math.isqrt(max(1, block_bytes // (4 * tokens * tokens)))))


def mutual_scores(features: torch.Tensor, fraction: float = FRACTION, block_bytes: int = BLOCK_BYTES,
                  device=None, queries: int | None = None) -> torch.Tensor:
    """Return (Q, T) float32 patch scores: mean of the smallest `fraction` of the distances to the other samples.

    features: (N, T, D), N >= 2 samples of one class (any float dtype; distances in float32, Euclidean).
    For patch t of sample i and every sample j != i: d_ij(t) = min over the T patches u of j of
    |f_i(t) - f_j(u)|; the score is the mean of the `kept_count(N, fraction)` smallest d_ij(t) over j.
    Blocks of `block_sizes` query samples x reference samples; device: where to compute (default: the
    features'); the result is on that device. queries: score only the first Q samples (each still
    against all N - 1 others; `detect` scores a new sample against a reference set); default all, Q = N.
    """
    samples, tokens, _ = features.shape
    if samples < 2:
        raise ValueError(f"mutual scoring needs at least 2 samples, got {samples}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    device = features.device if device is None else torch.device(device)
    keep = kept_count(samples, fraction)
    step = block_sizes(tokens, samples, block_bytes)
    queries = samples if queries is None else max(0, min(int(queries), samples))
    out = torch.empty(queries, tokens, dtype=torch.float32, device=device)
    for q0 in range(0, queries, step):
        query = features[q0:min(q0 + step, queries)].to(device, torch.float32)
        count = query.shape[0]
        flat_query = query.reshape(-1, query.shape[-1])
        query_norm = flat_query.square().sum(dim=-1, keepdim=True)
        nearest = torch.empty(count, tokens, samples, dtype=torch.float32, device=device)
        for r0 in range(0, samples, step):
            reference = features[r0:r0 + step].to(device, torch.float32).reshape(-1, flat_query.shape[-1])
            # squared distance |a|^2 + |b|^2 - 2 a.b: one (block T) x (block T) matrix, |a|^2 added after the
            # minimum over b (it is constant along it), the square root after the interval average's selection
            partial = torch.addmm(reference.square().sum(dim=-1)[None], flat_query, reference.T, alpha=-2)
            nearest[:, :, r0:r0 + len(reference) // tokens] = (
                partial.reshape(count, tokens, -1, tokens).amin(dim=-1) + query_norm.reshape(count, tokens, 1))
        own = torch.arange(count, device=device)
        nearest[own, :, q0 + own] = math.inf   # a sample never scores itself
        smallest = torch.topk(nearest, keep, dim=-1, largest=False).values
        out[q0:q0 + count] = smallest.clamp(min=0).sqrt().mean(dim=-1)
    return out


def upsample_scores(patch_scores: torch.Tensor, image_size: int) -> torch.Tensor:
    """Return (M, S, S) maps of (M, G*G) patch scores: bilinear, align_corners=False, as `train.maps.patch_maps`."""
    rows, tokens = patch_scores.shape
    side = math.isqrt(tokens)
    grid = patch_scores.float().reshape(rows, 1, side, side)
    return F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=False)[:, 0]


def rescore_by_neighbours(scores, global_features: torch.Tensor, ks: Sequence[int] = RESCORE_KS) -> torch.Tensor:
    """Return (N,) float64 re-scored sample scores: similarity-weighted mean over each sample's k nearest, mean over ks.

    scores: (N,) sample scores; global_features: (N, D), L2-normalised here. The scores are min-max
    normalised to [0, 1] first (all equal -> all 0). For each k (clipped to N), sample i keeps its k most
    cosine-similar samples (itself included: similarity 1) and averages their scores weighted by the
    similarity (negative similarities count 0; k = 1 returns the normalised scores).
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    span = scores.max() - scores.min()
    normalised = (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)
    unit = F.normalize(torch.as_tensor(global_features, dtype=torch.float64), dim=-1)
    similarity = (unit @ unit.T).clamp(min=0)
    similarity.fill_diagonal_(1.0)
    out = torch.zeros_like(normalised)
    for k in ks:
        weight, index = torch.topk(similarity, min(int(k), len(scores)), dim=-1)
        out += (weight * normalised[index]).sum(dim=-1) / weight.sum(dim=-1).clamp(min=1e-12)
    return out / len(ks)
