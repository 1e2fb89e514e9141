"""Similarity maps of PointAD, design §5: class probabilities, 2D patch maps, back-projection to points (eq. 2).

Pure torch, arrays in and arrays out, batch-first. Letters as in the store (design §4): B samples,
V views, P points, S pixels per image side, G patch grid side (24 for ViT-L/14 at 336), D feature
dimension, L tapped layers. Channel 0 of every two-class output is "normal", channel 1 "anomalous".
All functions are differentiable with respect to their float inputs; integer and bool inputs only
select entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

TEMPERATURE = 0.07  # CLIP's logit scale 1/100 is not used: PointAD and AnomalyCLIP divide cosines by 0.07


def class_probabilities(text_features: torch.Tensor, image_features: torch.Tensor,
                        temperature: float = TEMPERATURE) -> torch.Tensor:
    """Return P(g, f) (..., 2): softmax over {normal, anomalous} of cos(g, f) / temperature (design §5).

    text_features: (2, D) rows g_n, g_a shared by every image, or (B, 2, D) one pair per sample, in
    which case image_features must start with the same B: (B, ..., D).
    image_features: (..., D), e.g. (B*V, D) global view features or (B*V, G*G, D) patch tokens.
    Both inputs must already be L2-normalised (the backbone and the text encoder do that), so the
    cosine is the plain dot product; nothing is re-normalised here.
    """
    if text_features.ndim == 2:
        logits = image_features @ text_features.transpose(0, 1)
    elif text_features.ndim == 3:
        if image_features.ndim < 2 or image_features.shape[0] != text_features.shape[0]:
            raise ValueError(f"per-sample text features {tuple(text_features.shape)} need image features "
                             f"(B, ..., D) with the same B, got {tuple(image_features.shape)}")
        flat = image_features.reshape(image_features.shape[0], -1, image_features.shape[-1])
        logits = torch.bmm(flat, text_features.transpose(1, 2))
        logits = logits.reshape(*image_features.shape[:-1], text_features.shape[1])
    else:
        raise ValueError(f"text features must be (2, D) or (B, 2, D), got {tuple(text_features.shape)}")
    return torch.softmax(logits / temperature, dim=-1)


def patch_maps(text_features: torch.Tensor, patch_tokens: torch.Tensor | Sequence[torch.Tensor],
               image_size: int) -> torch.Tensor:
    """Return the 2D maps [S2d_n, S2d_a] (B*V, 2, S, S): patch probabilities upsampled, averaged over layers.

    text_features: (2, D), or (B, 2, D) one pair per sample: it is repeated for the V consecutive
    rows of that sample (row b*V + k is view k of sample b, the order of a (B, V, ...) reshape).
    patch_tokens: (L, B*V, G*G, D) L2-normalised patch tokens of the tapped layers (or a sequence of
    L tensors (B*V, G*G, D)), class token removed, row-major over the G x G grid.
    image_size: S.

    Per layer: P(g, token) as in `class_probabilities`, reshaped to G x G, bilinear upsampling to
    S x S with align_corners=False (pixel-centre alignment, the default of F.interpolate and what the
    released code uses, so patch centres land at pixel (i + 0.5) * S/G - 0.5 and borders are
    clamped); then the mean over the L layers (design §5). Bilinear upsampling is linear, so averaging
    at G x G and upsampling once gives the same maps as upsampling each layer: done in that order.
    """
    if not torch.is_tensor(patch_tokens):
        patch_tokens = torch.stack(list(patch_tokens))
    if patch_tokens.ndim != 4:
        raise ValueError(f"patch tokens must be (L, B*V, G*G, D), got {tuple(patch_tokens.shape)}")
    layers, rows, tokens, _ = patch_tokens.shape
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise ValueError(f"{tokens} patch tokens do not form a square grid (class token not removed?)")
    if text_features.ndim == 3:
        if rows % text_features.shape[0]:
            raise ValueError(f"{rows} view rows are not a multiple of {text_features.shape[0]} samples")
        text_features = text_features.repeat_interleave(rows // text_features.shape[0], dim=0)
        probs = class_probabilities(text_features, patch_tokens.transpose(0, 1))  # (B*V, L, G*G, 2)
        probs = probs.mean(dim=1)
    else:
        probs = class_probabilities(text_features, patch_tokens).mean(dim=0)  # (B*V, G*G, 2)
    grid = probs.transpose(1, 2).reshape(rows, 2, side, side)
    return F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=False)


def back_project(maps2d: torch.Tensor, pixel: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor,
                 proxy: torch.Tensor) -> torch.Tensor:
    """Return point maps S3d (B, P), or (B, C, P) for channelled maps: paper eq. 2, design §5.

    maps2d: (B, V, S, S) or (B, V, C, S, S) float per-view maps (e.g. C = 2: S2d_n, S2d_a).
    pixel: (B, V, P, 2) int (any integer dtype; the store's int16 is widened before indexing),
    (u = column, v = row); only read where the point is visible.
    visible: (B, V, P) bool; valid: (B, P) bool, False for padding; proxy: (B, P) int, the index of
    a point visible in some view (itself for a visible point, -1 for padding; design §3.7).

    For point j: S3d(j) = mean over the views k where j is visible of map_k[v_kj, u_kj] (the mean
    over the visible views, as the released code does, not the paper's 1/K sum); a valid point
    visible in no view takes the value of its proxy; padding, and a point whose proxy is visible
    nowhere or negative, gets 0. The maps are read by one gather of (B, V, C, P) entries followed by
    a masked mean: O(V * P), no loop. Gradients flow to maps2d only.
    """
    channelled = maps2d.ndim == 5
    if not channelled:
        maps2d = maps2d.unsqueeze(2)
    if maps2d.ndim != 5:
        raise ValueError(f"maps must be (B, V, S, S) or (B, V, C, S, S), got {tuple(maps2d.shape)}")
    batch, views, channels, height, width = maps2d.shape
    points = pixel.shape[2]
    if pixel.shape != (batch, views, points, 2) or visible.shape != (batch, views, points) \
            or valid.shape != (batch, points) or proxy.shape != (batch, points):
        raise ValueError(f"shapes disagree: maps {tuple(maps2d.shape)}, pixel {tuple(pixel.shape)}, visible "
                         f"{tuple(visible.shape)}, valid {tuple(valid.shape)}, proxy {tuple(proxy.shape)}")

    # A point seen in no view reads its proxy's pixels: redirect the index before the one gather.
    own = torch.arange(points, device=proxy.device).expand(batch, points)
    seen = (visible & valid.unsqueeze(1)).any(dim=1)
    source = torch.where(seen, own, proxy.long())
    usable = valid & (source >= 0)
    source = torch.where(usable, source, own)
    source_views = source.unsqueeze(1).expand(batch, views, points)
    weight = torch.gather(visible, 2, source_views) & usable.unsqueeze(1) \
        & torch.gather(valid, 1, source).unsqueeze(1)  # (B, V, P)

    u = torch.gather(pixel[..., 0], 2, source_views).long()
    v = torch.gather(pixel[..., 1], 2, source_views).long()
    flat_index = torch.where(weight, v * width + u, torch.zeros_like(u))  # masked entries read pixel 0
    flat_maps = maps2d.reshape(batch, views, channels, height * width)
    values = torch.gather(flat_maps, 3, flat_index.unsqueeze(2).expand(batch, views, channels, points))

    # where, not a product: a NaN at a pixel nobody reads must not leak into the sums
    total = torch.where(weight.unsqueeze(2), values, torch.zeros_like(values)).sum(dim=1)  # (B, C, P)
    count = weight.sum(dim=1, keepdim=True).clamp(min=1).to(values.dtype)  # (B, 1, P)
    out = total / count
    return out if channelled else out.squeeze(1)


def sample_probability(view_global_probs: torch.Tensor) -> torch.Tensor:
    """Return the sample's class probabilities (B, 2): mean over its V views (view MIL, design §5).

    view_global_probs: (B, V, 2) P(g, f_k) of each view's global feature. Averaged per sample (the
    released training script averages across the batch when B > 1: a bug not reproduced here).
    """
    if view_global_probs.ndim != 3:
        raise ValueError(f"view probabilities must be (B, V, 2), got {tuple(view_global_probs.shape)}")
    return view_global_probs.mean(dim=1)
