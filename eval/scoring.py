"""PointAD's streaming scorer (design §7.1): reads a store in batches, runs the frozen model, back-projects.

`score_store` yields one `SampleScores` per row, so memory depends on the batch size, not on the store;
`score_batch` scores rows already in memory (`score_arrays`: one rendered `SampleArrays`, as `pointad
detect` has). The vision tower runs once per batch (`encode_batch`, shared by every run of one frozen
model); the anomaly maps are back-projected on the device (`back_project_batch`); every row then goes
through the scoring tail of `eval.score_maps` (`score_row`: smoothing, sample scores, RGB fusion, the
released code's grids; arrays in, arrays out), on threads. Mutual scoring (`eval.mutual`) ends in the same
tail. Letters as in the store (design §4): B samples, V views, P points, S pixels, D feature dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..shared.store import open_store
from ..shared.threads import run_each, worker_pool
from ..train.model.backbone import encode_views
from ..train.model.maps import back_project, class_probabilities, patch_maps
from ..train.model.model_config import check_image_size
from .score_maps import ROW_FIELDS, SIGMA, SampleScores, is_organized, score_row

BASELINE_PROMPTS = ("A photo of a normal {}.", "A photo of an anomalous {}.")  # clip-rendering, design §7
BATCH_FIELDS = ("image", "pixel", "visible", "valid", "label", "proxy", "grid_index", "grid_hw", "knn",
                "knn_weight", "rgb")


TextFeatures = torch.Tensor | Callable[[str], torch.Tensor]


def baseline_text_features(backbone) -> Callable[[str], torch.Tensor]:
    """clip-rendering: class name -> (2, D) features of "A photo of a normal/an anomalous <cls>." (no training)."""
    cache: dict[str, torch.Tensor] = {}

    def features(class_name: str) -> torch.Tensor:
        if class_name not in cache:
            with torch.no_grad():
                cache[class_name] = backbone.encode_text([p.format(class_name) for p in BASELINE_PROMPTS])
        return cache[class_name]
    return features


def _text_for(text_features: TextFeatures, class_names: list[str], device) -> torch.Tensor:
    """(2, D) shared features, or (B, 2, D) one pair per sample from a per-class callable."""
    if torch.is_tensor(text_features):
        return text_features.to(device).float()
    return torch.stack([text_features(name) for name in class_names]).to(device).float()


@dataclass(frozen=True)
class BatchFeatures:
    """The frozen model's features of one batch, shared by every run scored with that model.

    views: (global (B, V, D), patches (L, B*V, G*G, D)) of the renderings; rgb: the same for the RGB
    images of the rows in `rgb_rows` (organized rows with RGB), or None when there are none.
    """

    views: tuple
    rgb_rows: list[int]
    rgb: tuple | None


def encode_batch(batch: dict, backbone, device="cpu", autocast: bool = False) -> BatchFeatures:
    """Run the vision tower once over a batch's renderings and RGB images (`score_batch` reuses them)."""
    count = batch["image"].shape[0]
    rgb_rows = [i for i in range(count) if _organized(batch, i) and batch["rgb"][i].any()]
    views = encode_views(backbone, batch["image"], device, autocast)
    rgb = encode_views(backbone, batch["rgb"][rgb_rows][:, None], device, autocast) if rgb_rows else None
    return BatchFeatures(views=views, rgb_rows=rgb_rows, rgb=rgb)


def _organized(batch: dict, i: int) -> bool:
    return is_organized(batch["grid_index"][i][batch["valid"][i]], batch["grid_hw"][i])


def _anomaly_outputs(features: tuple, text: torch.Tensor, size: int):
    """(view P_a (B, V), anomaly maps (B, V, S, S)) from `encode_views` output and the text features."""
    global_feature, patches = features
    b, v = global_feature.shape[:2]
    with torch.no_grad():
        view_probs = class_probabilities(text, global_feature)[..., 1]
        maps2d = patch_maps(text, patches, size)[:, 1].reshape(b, v, size, size)
    return view_probs, maps2d


def score_store(store_path, rows, backbone, text_features: TextFeatures, device="cpu", batch_size: int = 4,
                sigma: float = SIGMA, autocast: bool = False, compat: bool = False,
                keep_view_maps=False) -> Iterator[SampleScores]:
    """Yield `SampleScores` for each of `rows` (in order), reading and scoring `batch_size` rows at a time.

    text_features: (2, D) [g_n, g_a] for every sample, or a callable class name -> (2, D) (coop prompts,
    the clip-rendering baseline). Point maps: back-projection of the anomalous patch maps (design §5), then
    `eval.score_maps.score_row` (smoothing on the grid or the graph; RGB and fusion for organized
    samples whose rgb/image is not all zero). Each result's identity is the row's, plus "row". compat:
    also the released code's grid maps and scores. keep_view_maps: True, or a set of rows whose
    per-view maps are kept (for figures).
    """
    for scored in score_store_runs(store_path, rows, backbone, [text_features], device, batch_size, sigma,
                                   autocast, compat, keep_view_maps):
        yield scored[0]


def score_store_runs(store_path, rows, backbone, texts: list, device="cpu", batch_size: int = 4,
                     sigma: float = SIGMA, autocast: bool = False, compat: bool = False,
                     keep_view_maps=False, prefetch: bool = True) -> Iterator[list[SampleScores]]:
    """As `score_store` for several runs of one frozen model: yield per row a list, one `SampleScores` per
    text features of `texts`. The vision tower runs once per batch for all of them (the model is frozen,
    only the prompts differ between runs); keep_view_maps applies to the first run. prefetch: read the next
    batch from the store in a thread while this one is scored (the same scores either way)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")  # -2 would score nothing
    store = open_store(store_path)
    check_image_size(backbone.config, store.attrs.image_size, store_path)
    rows = [int(r) for r in rows]
    chunks = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]

    def read(chunk):
        return store.read_batch(chunk, BATCH_FIELDS), [store.identity(r) | {"row": r} for r in chunk]
    # the next batch is read (decompressed: Blosc releases the GIL) while this one is scored; the rows of a
    # batch are smoothed on threads of their own (scipy's filters release the GIL too)
    with ThreadPoolExecutor(max_workers=1) as reader, worker_pool() as row_pool:
        pending = reader.submit(read, chunks[0]) if chunks and prefetch else None
        for number, chunk in enumerate(chunks):
            batch, identities = pending.result() if prefetch else read(chunk)
            if prefetch and number + 1 < len(chunks):
                pending = reader.submit(read, chunks[number + 1])
            keep = [keep_view_maps is True or (bool(keep_view_maps) and r in keep_view_maps) for r in chunk]
            features = encode_batch(batch, backbone, device, autocast)
            per_run = [list(score_batch(batch, identities, backbone, text, device, sigma, autocast, compat,
                                        keep if run == 0 else None, features, row_pool))
                       for run, text in enumerate(texts)]
            for i in range(len(chunk)):
                yield [scored[i] for scored in per_run]


def score_arrays(arrays, identity: dict, backbone, text_features: TextFeatures, device="cpu", sigma: float = SIGMA,
                 autocast: bool = False) -> SampleScores:
    """`SampleScores` of one in-memory row (a `shared.store.SampleArrays`, e.g. from `render_sample`).

    identity: needs "class_name" (for per-class text features); kept as the result's identity.
    """
    batch = {name: np.asarray(getattr(arrays, name))[None] for name in BATCH_FIELDS}
    return next(score_batch(batch, [identity], backbone, text_features, device, sigma, autocast))


def back_project_batch(maps, batch: dict, device="cpu") -> np.ndarray:
    """Return the back-projected point scores (B, P) float32 of per-view maps (B, V, S, S) (design §5.4), on the
    CPU; computed on `device` with the batch's pixel, visible, valid and proxy fields."""
    with torch.no_grad():
        tensors = {k: torch.from_numpy(batch[k]).to(device) for k in ("pixel", "visible", "valid", "proxy")}
        raw = back_project(maps, tensors["pixel"], tensors["visible"], tensors["valid"], tensors["proxy"])
    return raw.cpu().numpy()


def rgb_on_grid(rgb_map: torch.Tensor, grid_hw) -> np.ndarray:
    """Return an RGB anomaly map (S, S) on the row's grid (H, W): bilinear where the sizes differ, as an array."""
    grid_hw = tuple(int(x) for x in grid_hw)
    if tuple(rgb_map.shape) != grid_hw:  # the RGB image is S x S; put its map on the grid
        rgb_map = F.interpolate(rgb_map[None, None], size=grid_hw, mode="bilinear", align_corners=False)[0, 0]
    return rgb_map.cpu().numpy()


def kept_map(view_map: torch.Tensor) -> np.ndarray:
    """A view map as `SampleScores` keeps it for figures: float16 on the CPU."""
    return view_map.cpu().numpy().astype(np.float16)


def score_batch(batch: dict, identities: list[dict], backbone, text_features: TextFeatures, device="cpu",
                sigma: float = SIGMA, autocast: bool = False, compat: bool = False,
                keep_view_maps: list[bool] | None = None, features: BatchFeatures | None = None,
                pool: ThreadPoolExecutor | None = None) -> Iterator[SampleScores]:
    """Yield `SampleScores` per row of `batch` ({field: (B, ...)} with the BATCH_FIELDS, as `read_batch` gives).

    compat: also the released code's grid maps (organized rows); keep_view_maps: per row, keep its view maps;
    features: the batch's `encode_batch` output when already computed (else computed here); pool: threads
    that run the rows' scoring tail (`score_row`) side by side (the same scores, in row order), else one row
    after another.
    """
    count = len(identities)
    keep_view_maps = keep_view_maps or [False] * count
    features = features if features is not None else encode_batch(batch, backbone, device, autocast)
    size = batch["image"].shape[2]
    text = _text_for(text_features, [i["class_name"] for i in identities], device)
    view_probs, maps2d = _anomaly_outputs(features.views, text, size)
    raw, view_probs = back_project_batch(maps2d, batch, device), view_probs.cpu().numpy()

    with_rgb = features.rgb_rows
    rgb_probs = rgb_maps = None
    if with_rgb:
        rgb_text = text[with_rgb] if text.ndim == 3 else text
        rgb_probs, rgb_maps = _anomaly_outputs(features.rgb, rgb_text, batch["rgb"].shape[1])
        rgb_probs, rgb_maps = rgb_probs[:, 0].cpu().numpy(), rgb_maps[:, 0]

    def row_scores(i: int) -> SampleScores:
        keep, rgb = keep_view_maps[i], {}
        if i in with_rgb:
            j = with_rgb.index(i)
            rgb = dict(rgb_map=rgb_on_grid(rgb_maps[j], batch["grid_hw"][i]), rgb_probs=rgb_probs[j:j + 1],
                       rgb_view_map=kept_map(rgb_maps[j]) if keep else None)
        return score_row(raw[i], {k: batch[k][i] for k in ROW_FIELDS}, identities[i], view_probs=view_probs[i],
                         sigma=sigma, compat=compat, view_maps=kept_map(maps2d[i]) if keep else None, **rgb)

    yield from run_each(pool, row_scores, range(count))
