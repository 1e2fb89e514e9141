"""Frozen vision features, computed once per rendering and cached (SPEC 6).

CLIP is frozen, so the vision tower's output for a rendering never changes: `compute_features`
runs it once over the chosen rows and writes a small Zarr group; epochs then read it and run only
the text side, similarity, back-projection and losses. The cache records the model, its layer taps
and the store fingerprint, and refuses to serve features for anything else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
import zarr

from shared.errors import CheckpointMismatchError
from shared.store import open_store, store_fingerprint
from train.backbone import normalize

CACHE_FORMAT = "pointad-features"


def encode_views(backbone, images: np.ndarray, device, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision features of (B, V, S, S, 3) renderings: global (B, V, D), patches (L, B*V, G*G, D), float32."""
    b, v = images.shape[:2]
    pixels = normalize(torch.from_numpy(images.reshape(b * v, *images.shape[2:])).to(device))
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                         enabled=autocast):
        features = backbone.encode_image(pixels)
    return features.global_feature.float().reshape(b, v, -1), features.patch_tokens.float()


def cache_identity(backbone, store_path) -> dict:
    """What a cache's features depend on: model, taps, dual path, and the store's content."""
    return {"format": CACHE_FORMAT, "model": backbone.config.to_dict(), "store_fingerprint": store_fingerprint(store_path)}


def compute_features(backbone, store_path, rows: np.ndarray, out: Path, *, device="cpu", batch_size: int = 4,
                     autocast: bool = False, dtype: str = "float32", progress=None) -> Path:
    """Write the features of `rows` to the Zarr group `out` (atomically: temp folder, then rename)."""
    store = open_store(store_path)
    rows = np.asarray(rows, dtype=np.int64)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(tmp, mode="w")
    group.attrs.update(cache_identity(backbone, store_path) | {"rows": rows.tolist(), "dtype": dtype})
    global_array = patch_array = None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = store.read_batch(chunk.tolist(), ("image",))["image"]
        global_feature, patches = encode_views(backbone, images, device, autocast)
        b, v = images.shape[:2]
        patches = patches.reshape(patches.shape[0], b, v, *patches.shape[2:]).permute(1, 0, 2, 3, 4)
        if global_array is None:
            # features are dense floats: compression would cost more time than the bytes it saves
            global_array = group.create_array("global", shape=(len(rows), *global_feature.shape[1:]), dtype=dtype,
                                              chunks=(1, *global_feature.shape[1:]), compressors=None)
            patch_array = group.create_array("patches", shape=(len(rows), *patches.shape[1:]), dtype=dtype,
                                             chunks=(1, *patches.shape[1:]), compressors=None)
        global_array[start:start + b] = global_feature.cpu().numpy().astype(dtype)
        patch_array[start:start + b] = patches.cpu().numpy().astype(dtype)
        if progress is not None:
            progress.update(b)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


class FeatureCache:
    """Read side of a feature cache; `get(rows)` returns (global (B, V, D), patches (L, B*V, G*G, D)) float32.

    A cache smaller than `memory_limit` bytes is loaded once onto `device` (epochs then never touch
    the disk: on a GPU, re-reading from disk costs more than re-running the vision tower); a larger
    one is read per batch, so memory stays bounded.
    """

    def __init__(self, path: Path, backbone, store_path, device="cpu", memory_limit: int = 8 * 2**30):
        self.path = Path(path)
        group = zarr.open_group(self.path, mode="r")
        expected, found = cache_identity(backbone, store_path), dict(group.attrs)
        for key in ("format", "model", "store_fingerprint"):
            if found.get(key) != expected[key]:
                raise CheckpointMismatchError(f"{self.path}: feature cache made for another {key.replace('_', ' ')}; "
                                              "delete it or run 'train features' again")
        self.position = {row: i for i, row in enumerate(found["rows"])}
        self.global_array, self.patch_array = group["global"], group["patches"]
        self.loaded = None
        size = self.patch_array.nbytes + self.global_array.nbytes
        if size <= memory_limit:
            self.loaded = (torch.from_numpy(self.global_array[...]).to(device),
                           torch.from_numpy(self.patch_array[...]).to(device))

    def covers(self, rows) -> bool:
        return all(int(r) in self.position for r in rows)

    def get(self, rows, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        where = [self.position[int(r)] for r in rows]
        if self.loaded is not None:
            index = torch.tensor(where, device=self.loaded[0].device)
            global_feature, patches = self.loaded[0][index].float(), self.loaded[1][index].float()
        else:
            global_feature = torch.from_numpy(self.global_array.get_orthogonal_selection((where,))).float()
            patches = torch.from_numpy(self.patch_array.get_orthogonal_selection((where,))).float()
        b, l, v = patches.shape[:3]
        patches = patches.permute(1, 0, 2, 3, 4).reshape(l, b * v, *patches.shape[3:])
        return global_feature.to(device), patches.to(device)
