"""train/model/maps.py against hand cases and plainly-correct loops (an independent computation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pointad.train.model.maps import back_project, class_probabilities, patch_maps, sample_probability


def _close(actual, expected, atol=1e-6):
    """Assert equal within atol; report the largest difference and where."""
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = (actual - expected).abs()
    if diff.numel() and diff.max() > atol:
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(f"max difference {diff.max().item():.3g} at {where}: "
                             f"{actual[where].item()} vs {expected[where].item()}")


# --- class_probabilities ---------------------------------------------------------------------------

def test_class_probabilities_hand_case():
    # g_n = e0, g_a = e1; f = (cos 60deg, sin 60deg): cosines 0.5 and sqrt(3)/2
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[0.5, math.sqrt(3) / 2], [1.0, 0.0]])
    ea, en = math.exp((math.sqrt(3) / 2) / 0.07), math.exp(0.5 / 0.07)
    expected = [[en / (en + ea), ea / (en + ea)],
                [math.exp(1 / 0.07) / (math.exp(1 / 0.07) + 1), 1 / (math.exp(1 / 0.07) + 1)]]
    _close(class_probabilities(text, image), expected)
    # temperature 1: softmax of the plain cosines
    e0, e1 = math.exp(0.5), math.exp(math.sqrt(3) / 2)
    _close(class_probabilities(text, image[:1], temperature=1.0), [[e0 / (e0 + e1), e1 / (e0 + e1)]])


def test_class_probabilities_per_sample_text_matches_shared_text():
    gen = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(3, 2, 8, generator=gen), dim=-1)
    image = F.normalize(torch.randn(3, 4, 5, 8, generator=gen), dim=-1)
    out = class_probabilities(text, image)
    assert out.shape == (3, 4, 5, 2)
    for b in range(3):
        _close(out[b], class_probabilities(text[b], image[b]))
    _close(out.sum(-1), torch.ones(3, 4, 5))


def test_class_probabilities_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="same B"):
        class_probabilities(torch.zeros(3, 2, 4), torch.zeros(2, 4))


# --- patch_maps --------------------------------------------------------------------------------------

def _bilinear_2_to_4(grid):
    """Upsample a 2x2 grid to 4x4 by hand, align_corners=False: source x = (i + 0.5) / 2 - 0.5, clamped."""
    weights = []  # per output index: (low source index, high source index, weight of high)
    for i in range(4):
        x = min(max((i + 0.5) / 2 - 0.5, 0.0), 1.0)
        weights.append((0, 1, x))
    out = [[0.0] * 4 for _ in range(4)]
    for r in range(4):
        r0, r1, wr = weights[r]
        for c in range(4):
            c0, c1, wc = weights[c]
            out[r][c] = ((1 - wr) * (1 - wc) * grid[r0][c0] + (1 - wr) * wc * grid[r0][c1]
                         + wr * (1 - wc) * grid[r1][c0] + wr * wc * grid[r1][c1])
    return out


def test_patch_maps_hand_case_g2_s4():
    # D = 2, text g_n = e0, g_a = e1; one view, two layers; tokens row-major over the 2x2 grid
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    angles = [[0.0, 0.3, 0.9, 1.5], [0.2, 0.2, 1.0, 0.6]]  # per layer, per token
    tokens = torch.tensor([[[[math.cos(a), math.sin(a)] for a in layer]] for layer in angles])  # (L=2, 1, 4, 2)
    out = patch_maps(text, tokens, image_size=4)
    assert out.shape == (1, 2, 4, 4)

    def p_anomalous(a):
        en, ea = math.exp(math.cos(a) / 0.07), math.exp(math.sin(a) / 0.07)
        return ea / (en + ea)

    per_layer = [_bilinear_2_to_4([[p_anomalous(layer[0]), p_anomalous(layer[1])],
                                   [p_anomalous(layer[2]), p_anomalous(layer[3])]]) for layer in angles]
    expected_a = [[(per_layer[0][r][c] + per_layer[1][r][c]) / 2 for c in range(4)] for r in range(4)]
    _close(out[0, 1], expected_a)
    _close(out[0, 0], 1 - torch.tensor(expected_a))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patch_maps_matches_per_layer_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    layers, batch, views, side, dim, size = 3, 2, 3, 4, 6, 10
    text = F.normalize(torch.randn(batch, 2, dim, generator=gen), dim=-1)
    tokens = F.normalize(torch.randn(layers, batch * views, side * side, dim, generator=gen), dim=-1)
    out = patch_maps(text, list(tokens), size)
    expected = torch.zeros(batch * views, 2, size, size)
    for layer in range(layers):
        for row in range(batch * views):
            probs = class_probabilities(text[row // views], tokens[layer, row])  # (G*G, 2)
            grid = probs.T.reshape(1, 2, side, side)
            expected[row] += F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0]
    _close(out, expected / layers)
    # shared text features equal per-sample text features that are all the same
    _close(patch_maps(text[0], tokens, size), patch_maps(text[:1].expand(batch, 2, dim), tokens, size))


def test_patch_maps_rejects_non_square_grid():
    with pytest.raises(ValueError, match="square"):
        patch_maps(torch.zeros(2, 4), torch.zeros(1, 2, 5, 4), 8)


# --- back_project ------------------------------------------------------------------------------------

def _back_project_by_loop(maps, pixel, visible, valid, proxy):
    """Eq. 2 point by point and view by view. maps (B, V, C, S, S) -> (B, C, P)."""
    batch, views, channels = maps.shape[:3]
    points = pixel.shape[2]
    out = torch.zeros(batch, channels, points, dtype=torch.float64)

    def direct(b, j):
        total, count = torch.zeros(channels, dtype=torch.float64), 0
        for k in range(views):
            if visible[b, k, j]:
                u, v = int(pixel[b, k, j, 0]), int(pixel[b, k, j, 1])
                total += maps[b, k, :, v, u].double()
                count += 1
        return total / count if count else None

    for b in range(batch):
        for j in range(points):
            if not valid[b, j]:
                continue
            value = direct(b, j)
            if value is None:
                value = direct(b, int(proxy[b, j]))
            out[b, :, j] = value
    return out


def _random_case(seed, batch=2, views=4, points=40, size=6, channels=2, pixel_dtype=torch.int16):
    """Random maps and point arrays with padding and points seen in no view, store conventions."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.rand(batch, views, channels, size, size, generator=gen, dtype=torch.float64)
    pixel = torch.randint(0, size, (batch, views, points, 2), generator=gen).to(pixel_dtype)
    visible = torch.rand(batch, views, points, generator=gen) < 0.35
    n_valid = [points - 7, points]
    valid = torch.zeros(batch, points, dtype=torch.bool)
    proxy = torch.full((batch, points), -1, dtype=torch.int32)
    for b in range(batch):
        n = n_valid[b % 2]
        valid[b, :n] = True
        visible[b, :, n:] = torch.rand(views, points - n, generator=gen) < 0.5  # visibility of padding: ignored
        pixel[b, :, n:] = -1  # never read
        visible[b, :, :3] = False  # at least three points seen nowhere
        seen = visible[b, :, :n].any(0)
        seen_index = torch.nonzero(seen).flatten()
        for j in range(n):
            proxy[b, j] = j if seen[j] else seen_index[torch.randint(len(seen_index), (1,), generator=gen)]
        # pixels of points not visible may lie outside the image: they must never be read
        outside = ~visible[b] & (torch.rand(views, points, generator=gen) < 0.3)
        pixel[b][outside] = torch.tensor([size + 5, -3], dtype=pixel_dtype)
    return maps, pixel, visible, valid, proxy


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_back_project_matches_loop_with_channels(seed):
    maps, pixel, visible, valid, proxy = _random_case(seed)
    assert (~visible.any(1) & valid).sum() >= 3  # the proxy path is exercised
    expected = _back_project_by_loop(maps, pixel, visible, valid, proxy)
    out = back_project(maps, pixel, visible, valid, proxy)
    assert out.shape == (2, 2, 40)
    _close(out, expected, atol=1e-12)
    assert (out[0, :, 33:] == 0).all()  # padding


@pytest.mark.parametrize("seed", [5, 6])
def test_back_project_without_channel_dim(seed):
    maps, pixel, visible, valid, proxy = _random_case(seed, channels=1, views=3, pixel_dtype=torch.int64)
    out = back_project(maps[:, :, 0], pixel, visible, valid, proxy.long())
    assert out.shape == (2, 40)
    _close(out, _back_project_by_loop(maps, pixel, visible, valid, proxy)[:, 0], atol=1e-12)


def test_back_project_int16_pixels_on_a_large_image():
    # v * S + u overflows int16 at S = 200 (row 199: 39 800): the index must be widened first
    size = 200
    maps = torch.zeros(1, 1, size, size)
    maps[0, 0, 199, 150] = 7.0
    maps[0, 0, 3, 4] = 2.0
    pixel = torch.tensor([[[[150, 199], [4, 3]]]], dtype=torch.int16)
    out = back_project(maps, pixel, torch.ones(1, 1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool),
                       torch.tensor([[0, 1]]))
    _close(out, [[7.0, 2.0]])


def test_back_project_hand_case():
    # 2 views of a 2x2 image; point 0 seen in both, point 1 only in view 1, point 2 nowhere (proxy 1),
    # point 3 padding
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])  # (1, 2, 2, 2)
    pixel = torch.tensor([[[[1, 0], [0, 0], [0, 1], [1, 1]],
                           [[0, 1], [1, 1], [0, 0], [0, 0]]]])  # (u, v)
    visible = torch.tensor([[[True, False, False, True], [True, True, False, True]]])
    valid = torch.tensor([[True, True, True, False]])
    proxy = torch.tensor([[0, 1, 1, -1]])
    out = back_project(maps, pixel, visible, valid, proxy)
    _close(out, [[(2.0 + 30.0) / 2, 40.0, 40.0, 0.0]])


def test_back_project_gradient_counts_reads():
    maps, pixel, visible, valid, proxy = _random_case(7)
    maps = maps.clone().requires_grad_(True)
    back_project(maps, pixel, visible, valid, proxy).sum().backward()
    # d(sum)/d(pixel) = sum over the points whose value reads it of 1 / (number of views their source is seen in)
    expected = torch.zeros_like(maps)
    for b in range(maps.shape[0]):
        for j in range(pixel.shape[2]):
            if not valid[b, j]:
                continue
            src = j if visible[b, :, j].any() else int(proxy[b, j])
            seen_in = [k for k in range(maps.shape[1]) if visible[b, k, src]]
            for k in seen_in:
                u, v = int(pixel[b, k, src, 0]), int(pixel[b, k, src, 1])
                expected[b, k, :, v, u] += 1.0 / len(seen_in)
    _close(maps.grad, expected, atol=1e-12)


def test_back_project_gradcheck():
    maps, pixel, visible, valid, proxy = _random_case(8, points=12, size=4, views=2)
    maps = maps.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: back_project(m, pixel, visible, valid, proxy), (maps,))


def test_back_project_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes disagree"):
        back_project(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 5, 2, dtype=torch.long),
                     torch.zeros(1, 3, 5, dtype=torch.bool), torch.zeros(1, 5, dtype=torch.bool),
                     torch.zeros(1, 5, dtype=torch.long))


# --- sample_probability ------------------------------------------------------------------------------

def test_sample_probability_averages_views_per_sample():
    probs = torch.tensor([[[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]],
                          [[0.5, 0.5], [0.1, 0.9], [0.0, 1.0]]])
    _close(sample_probability(probs), [[(0.9 + 0.7 + 0.2) / 3, (0.1 + 0.3 + 0.8) / 3],
                                       [(0.5 + 0.1 + 0.0) / 3, (0.5 + 0.9 + 1.0) / 3]])
