"""`--method mutual-scoring`: a training-free method scored on the same store as PointAD (issue 13, after MuSc).

Per test class, every sample's renderings (and RGB image) go once through the frozen vision tower on its
plain attention path (`mutual_model_config`: no DPAM; the tapped layers an option). The patch tokens are
aggregated over r x r neighbourhoods and the class's samples score each other
(`eval.mutual_math`, the math; this module is its shell: features, store passes, results); the patch
scores of each view are upsampled to S x S and become point scores through PointAD's own back-projection
(`eval.scoring.back_project_batch`), proxies and scoring tail (`eval.score_maps.score_row`: smoothing,
RGB fusion, the released code's grids), so the two methods differ only in where the per-view maps come
from. Sample score: the maximum of the point map (RGB: of the RGB map; `score_row` without the model's
probabilities); the multimodal map and score are PointAD's fusion. With `rescore_ks`, the sample scores
of each block are re-scored by their global-feature neighbours.
The result is one `eval.score_maps.SampleScores` per row, as the PointAD scorer gives, so the report's
metrics, protocols and figures apply unchanged. `score_against_reference` scores one in-memory rendering
(`detect --method mutual-scoring`) against a store's samples with the same functions.

Memory: the class's patch tokens are held as float16, N x V x L x G*G x D x 2 bytes (ViT-L/14@336, 9
views, 4 layers: about 32 MB a sample); the mutual scoring itself is blocked (`mutual_scores`). Two
passes over the store: features first, then the geometry in batches for the back-projection.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..shared.errors import PointADError
from ..shared.store import open_store
from ..train.model.model_config import ModelConfig, check_image_size
from .mutual_math import aggregate_neighbourhoods, mutual_scores, rescore_by_neighbours, upsample_scores

# MutualOptions and its choices live in the light eval/options.py (the command line reads them)
from .options import MUTUAL as METHOD
from .options import MutualOptions
from .score_maps import ROW_FIELDS, SIGMA, SampleScores, score_row
from .scoring import back_project_batch, encode_batch, kept_map, rgb_on_grid

FEATURE_FIELDS = ("image", "rgb", "grid_hw", "grid_index", "valid")
GEOMETRY_FIELDS = ("pixel", "visible", "valid", "label", "proxy", "grid_index", "grid_hw", "knn", "knn_weight")
# Published means of MuSc-V2 (Li, Xue, Zhou, arXiv 2511.10047, 2025) as quoted in issue 13, which sets them
# beside PointAD's point-level (ZS 3D) means; the table number was not checked here. Eyecandies: not known.
PUBLISHED = {("mvtec3d", "point"): {"i_auroc": 0.881, "ap": 0.968, "p_auroc": 0.990, "aupro": 0.970}}
PUBLISHED_SOURCE = ("MuSc-V2 (Li, Xue, Zhou 2025, arXiv 2511.10047) MVTec 3D-AD means as quoted in issue 13 "
                    "(table number not checked; their method differs: 3D features, IPG, SNAMD, CAE, RsCon)")


def mutual_model_config(config: ModelConfig, layers=None) -> ModelConfig:
    """`config` on its plain attention path (no DPAM blocks), tapped at `layers` (1-based; None keeps its taps);
    the label says so."""
    plain = config.with_dual_path(())
    if layers:
        plain = plain.with_taps(layers)
    return ModelConfig.from_dict({**plain.to_dict(), "label": f"{config.label}, plain attention"}, source=config.name)


@dataclass
class ClassFeatures:
    """The vision features of a class's rows. views: (L, N, V, T, D) float16 patch tokens; view_global: (N, D)
    mean of the views' global features; rgb_rows: positions (in rows) with RGB; rgb: (L, N_rgb, T, D) or
    None; rgb_global: (N_rgb, D) or None; size, rgb_size: S of the renderings and of the RGB images."""

    views: torch.Tensor
    view_global: torch.Tensor
    rgb_rows: list[int]
    rgb: torch.Tensor | None
    rgb_global: torch.Tensor | None
    size: int
    rgb_size: int


def class_features(store, rows: list[int], backbone, device="cpu", batch_size: int = 4,
                   autocast: bool = False) -> ClassFeatures:
    """Run the vision tower once over the rows' renderings and RGB images (`eval.scoring.encode_batch`)."""
    check_image_size(backbone.config, store.attrs.image_size, store.path)
    batches = ((start, store.read_batch(rows[start:start + batch_size], FEATURE_FIELDS))
               for start in range(0, len(rows), batch_size))
    return batch_features(batches, backbone, device, autocast)


def batch_features(batches, backbone, device="cpu", autocast: bool = False) -> ClassFeatures:
    """`ClassFeatures` of (position of the batch's first sample, {FEATURE_FIELDS: (B, ...)}) pairs, in order:
    store rows (`class_features`) or one in-memory rendering (`score_against_reference`)."""
    views, view_global, rgb, rgb_global, rgb_rows = [], [], [], [], []
    size = rgb_size = 0
    for start, batch in batches:
        size, rgb_size = batch["image"].shape[2], batch["rgb"].shape[1]
        features = encode_batch(batch, backbone, device, autocast)
        global_feature, patches = features.views
        b, v = global_feature.shape[:2]
        views.append(patches.reshape(patches.shape[0], b, v, *patches.shape[2:]).half().cpu())
        view_global.append(F.normalize(global_feature.mean(dim=1), dim=-1).cpu())
        if features.rgb is not None:
            rgb_global.append(features.rgb[0][:, 0].cpu())
            rgb.append(features.rgb[1].half().cpu())
            rgb_rows += [start + i for i in features.rgb_rows]
    return ClassFeatures(views=torch.cat(views, dim=1), view_global=torch.cat(view_global),
                         rgb_rows=rgb_rows, rgb=torch.cat(rgb, dim=1) if rgb else None,
                         rgb_global=torch.cat(rgb_global) if rgb_global else None, size=size, rgb_size=rgb_size)


def patch_scores(tokens: torch.Tensor, options: MutualOptions, device="cpu", queries: int | None = None) -> torch.Tensor:
    """Return (Q, V, T) float32 patch scores (on CPU), the mean over layers and radii of `mutual_scores`.

    tokens: (L, N, V, T, D) patch tokens of N samples (V = 1 for RGB images). queries: score only the first
    Q samples, each against all N - 1 others (default all, Q = N).
    """
    layers, samples, views, count, _ = tokens.shape
    queries = samples if queries is None else queries
    total = torch.zeros(queries, views, count, dtype=torch.float32, device=device)
    for layer in range(layers):
        for radius in options.radii:
            aggregated = torch.stack([aggregate_neighbourhoods(tokens[layer, :, k].to(device), radius)
                                      for k in range(views)], dim=1)          # (N, V, T, D)
            if options.views == "all":
                flat = aggregated.reshape(samples, views * count, -1)
                total += mutual_scores(flat, options.fraction, options.block_bytes, device,
                                       queries).reshape(total.shape)
            else:
                for k in range(views):
                    total[:, k] += mutual_scores(aggregated[:, k], options.fraction, options.block_bytes, device,
                                                 queries)
    return (total / (layers * len(options.radii))).cpu()


def score_class(store_path, rows, backbone, options: MutualOptions = MutualOptions(), device="cpu",
                batch_size: int = 4, sigma: float = SIGMA, autocast: bool = False, compat: bool = False,
                keep_view_maps=False) -> list[SampleScores]:
    """Return one `SampleScores` per row of `rows` (the test samples of ONE class, scored against each other).

    As `eval.scoring.score_store` for PointAD (module docstring); keep_view_maps: True or a set of rows
    whose per-view score maps are kept (figures). PointADError when fewer than 2 rows are given.
    """
    store = open_store(store_path)
    rows = [int(r) for r in rows]
    if len(rows) < 2:
        raise PointADError(f"{store_path}: mutual scoring needs at least 2 test samples of a class, got {len(rows)}")
    features = class_features(store, rows, backbone, device, batch_size, autocast)
    view_scores = patch_scores(features.views, options, device)                # (N, V, T)
    rgb_scores = None
    if features.rgb is not None and len(features.rgb_rows) >= 2:
        rgb_scores = patch_scores(features.rgb[:, :, None], options, device)[:, 0]  # (N_rgb, T)
    results = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = store.read_batch(chunk, GEOMETRY_FIELDS)
        keep = [keep_view_maps is True or (bool(keep_view_maps) and r in keep_view_maps) for r in chunk]
        n, v = len(chunk), view_scores.shape[1]
        maps = upsample_scores(view_scores[start:start + n].reshape(n * v, -1), features.size)
        maps = maps.reshape(n, v, features.size, features.size)
        rgb_maps = {}
        if rgb_scores is not None:
            for i in range(n):
                if start + i in features.rgb_rows:
                    j = features.rgb_rows.index(start + i)
                    rgb_maps[i] = upsample_scores(rgb_scores[j:j + 1], features.rgb_size)[0]
        identities = [store.identity(r) | {"row": r} for r in chunk]
        results += list(_score_rows(batch, identities, maps, rgb_maps, sigma, compat, keep))
    if options.rescore_ks:
        results = _rescored(results, features, options.rescore_ks)
    return results


def score_against_reference(arrays, identity: dict, store_path, rows, backbone, options: MutualOptions = MutualOptions(),
                            device="cpu", batch_size: int = 4, sigma: float = SIGMA,
                            autocast: bool = False) -> SampleScores:
    """`SampleScores` of one in-memory row (a `shared.store.SampleArrays`, e.g. from `render_sample`) scored
    against the store's `rows` (its reference samples; `detect --method mutual-scoring`).

    As `score_class` for a row that is not among `rows`: the row is the query and the N - 1 = len(rows)
    reference samples the others, so a store sample scored here against its class's other test rows gets
    the scores `score_class` gives it. Point scores only: the sample score is the point map's maximum,
    without `rescore_ks` (it re-scores a whole set), and no RGB (a cloud file has none).
    """
    rows = [int(r) for r in rows]
    if not rows:
        raise PointADError(f"{store_path}: mutual scoring needs at least 1 reference sample, got none")
    reference = class_features(open_store(store_path), rows, backbone, device, batch_size, autocast)
    batch = {name: np.asarray(getattr(arrays, name))[None] for name in FEATURE_FIELDS + GEOMETRY_FIELDS}
    query = batch_features([(0, {k: batch[k] for k in FEATURE_FIELDS})], backbone, device, autocast)
    if query.size != reference.size:
        raise PointADError(f"{store_path}: reference renderings are {reference.size} px, the cloud's {query.size} px")
    scores = patch_scores(torch.cat([query.views, reference.views], dim=1), options, device, queries=1)
    maps = upsample_scores(scores.reshape(scores.shape[1], -1), query.size)[None]   # (1, V, S, S)
    return next(_score_rows(batch, [identity], maps, {}, sigma, False, [False]))


def _score_rows(batch, identities, maps, rgb_maps, sigma, compat, keep):
    """SampleScores of a batch from its per-view score maps (B, V, S, S) and RGB maps {i: (S, S)}: PointAD's
    back-projection (on the CPU) and scoring tail, without global probabilities (sample score = map maximum)."""
    raw = back_project_batch(maps, batch)
    for i, identity in enumerate(identities):
        rgb = {}
        if i in rgb_maps:  # RGB rows are organized rows (`encode_batch`)
            rgb = dict(rgb_map=rgb_on_grid(rgb_maps[i], batch["grid_hw"][i]),
                       rgb_view_map=kept_map(rgb_maps[i]) if keep[i] else None)
        yield score_row(raw[i], {k: batch[k][i] for k in ROW_FIELDS}, identity, sigma=sigma, compat=compat,
                        view_maps=kept_map(maps[i]) if keep[i] else None, **rgb)


def _rescored(results: list[SampleScores], features: ClassFeatures, ks) -> list[SampleScores]:
    """The results with each block's sample scores (and compat scores) re-scored by `rescore_by_neighbours`:
    point by the views' mean global feature, RGB by the RGB image's, multimodal by the mean of the two."""
    view_global = F.normalize(features.view_global.float(), dim=-1)
    new = {i: {} for i in range(len(results))}
    compat = {i: dict(r.compat) for i, r in enumerate(results) if r.compat is not None}

    def apply(block, positions, globals_, attribute):
        if len(positions) < 2:
            return
        for source in ("scores", "compat"):
            held = [i for i in positions if source == "scores" or block in compat.get(i, {})]
            if len(held) < 2:
                continue
            old = [getattr(results[i], attribute) if source == "scores" else compat[i][block][1] for i in held]
            chosen = globals_[[positions.index(i) for i in held]]
            for i, value in zip(held, rescore_by_neighbours(old, chosen, ks).tolist()):
                if source == "scores":
                    new[i][attribute] = value
                else:
                    compat[i][block] = (compat[i][block][0], value)

    apply("point", list(range(len(results))), view_global, "score")
    with_rgb = [i for i, r in enumerate(results) if r.has_rgb]
    if with_rgb and features.rgb_global is not None:
        rgb_global = F.normalize(features.rgb_global.float(), dim=-1)
        by_row = dict(zip(features.rgb_rows, rgb_global))
        rgb_only = torch.stack([by_row[i] for i in with_rgb])
        apply("rgb", with_rgb, rgb_only, "rgb_score")
        apply("multimodal", with_rgb, F.normalize(rgb_only + view_global[with_rgb], dim=-1), "multimodal_score")
    return [dataclasses.replace(r, **new[i], **({"compat": compat[i]} if i in compat else {}))
            for i, r in enumerate(results)]


def attach_published(report) -> None:
    """Fill an `eval.report.Report` of this method with the published numbers where known (`PUBLISHED`) and
    say in its header where they come from, or that none are known for its dataset."""
    h = report.header
    dataset = _paper_dataset(h["dataset"])
    report.paper = {block: ({"mean": PUBLISHED[dataset, block]} if (dataset, block) in PUBLISHED else None)
                    for block in report.blocks}
    if any(report.paper.values()):
        blocks = ", ".join(b for b, table in report.paper.items() if table)
        h["paper"] = f"{PUBLISHED_SOURCE}; mean row only, block(s): {blocks}"
    else:
        h["paper"] = (f"no published {METHOD} numbers known here for test dataset {h['dataset']} (MuSc-V2 also "
                      f"reports Eyecandies, but its table is not transcribed)")


def _paper_dataset(name: str) -> str:
    """The paper's dataset key of a store dataset name: mvtec3d, eyecandies, real3d (synthetic-* never match)."""
    return {"mvtec3d": "mvtec3d", "mvtec_3d": "mvtec3d", "eyecandies": "eyecandies"}.get(name.lower(), name.lower())
