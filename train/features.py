"""Frozen vision features, computed once per rendering and cached (design §6).

CLIP is frozen, so the vision tower's output for a rendering never changes: `compute_features`
runs it once over the chosen rows and writes a small Zarr group; epochs then read it and run only
the text side, similarity, back-projection and losses. The cache records the model, its layer taps,
a digest of its weights, the store fingerprint and a digest of each cached row's renderings as stored
(`row_content`): a store changed in place at the same path (rows re-rendered with other pixels, rows
appended) no longer matches. A cache with the same record is reused, another one is refused (saying
what differs) unless a rebuild is asked for. A cache only ever replaces a
cache (recognised by its `format` attribute), is written under its writer lock, and appears at its
path only when complete (temp group, then rename).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..shared.errors import CheckpointMismatchError, PointADError
from ..shared.lock import writer_lock
from ..shared.store import open_store, store_fingerprint
from .model.backbone import encode_views
from .model.model_config import check_image_size

CACHE_FORMAT = "pointad-features"


def weights_digest(backbone) -> str:
    """16 hex digits over the backbone's weights (names, dtypes, shapes, bytes): the tiny model's random
    weights differ by seed, a real model's by its weights file, and either changes the features."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_identity(backbone, store_path) -> dict:
    """What a cache's features depend on: model (with its taps and dual path), its weights, the store's content."""
    return {"format": CACHE_FORMAT, "model": backbone.config.to_dict(), "weights": weights_digest(backbone),
            "store_fingerprint": store_fingerprint(store_path)}


CONTENT_ARRAY = "views/image"  # the only store array the vision features are computed from
CONTENT_BATCH = 64  # rows whose stored bytes are held at once while digesting


def row_content(store_path, rows) -> dict[str, str]:
    """{str(row): 16 hex digits} over each row's `views/image` as stored: what its features are computed from.

    Zarr store: the row's chunk bytes as they are on disk (one chunk a row, read without decoding: about a
    millisecond a row), so rendering a row again with other pixels changes its digest and an identical
    re-render does not; a missing chunk digests as missing. Another store (the HDF5 twin): the decoded
    views. Independent of the store's path: a copy or another spelling of it gives the same digests.
    """
    store = open_store(store_path)
    rows = [int(r) for r in rows]
    array = store.array(CONTENT_ARRAY)
    out = {}
    for start in range(0, len(rows), CONTENT_BATCH):
        batch = rows[start:start + CONTENT_BATCH]
        if isinstance(array, zarr.Array):
            blobs = _chunk_bytes(array, batch)
        else:
            blobs = [image.tobytes() for image in store.read_batch(batch, ("image",))["image"]]
        for row, blob in zip(batch, blobs):
            out[str(row)] = hashlib.sha256(b"missing" if blob is None else b"chunk" + blob).hexdigest()[:16]
    return out


def _chunk_bytes(array: zarr.Array, rows: list[int]) -> list[bytes | None]:
    """The stored (encoded) bytes of each row's chunk of a worker-written array, None where it is missing."""
    extra = (0,) * (array.ndim - 1)

    async def get(row):
        key = array.metadata.encode_chunk_key((row, *extra))
        buffer = await (array.async_array.store_path / key).get(default_buffer_prototype())
        return None if buffer is None else buffer.to_bytes()

    async def get_all():
        return await asyncio.gather(*(get(row) for row in rows))
    return sync(get_all())


def differences(found: dict, expected: dict) -> list[str]:
    """What differs between a cache's recorded identity and the wanted one, in words (empty: same).

    `row_content` (when expected holds it) is compared for the rows the cache holds; a cache that recorded
    none (an older version's) differs."""
    differ = []
    model, wanted = found.get("model") if isinstance(found.get("model"), dict) else {}, expected["model"]
    if model.get("tap_layers") != wanted.get("tap_layers"):
        differ.append("taps")
    if {k: v for k, v in model.items() if k != "tap_layers"} != {k: v for k, v in wanted.items() if k != "tap_layers"}:
        differ.append("model")
    if found.get("weights") != expected["weights"]:
        differ.append("model weights")
    if found.get("store_fingerprint") != expected["store_fingerprint"]:
        differ.append("store")
    wanted = expected.get("row_content")
    if wanted is not None:
        have = found.get("row_content")
        if not isinstance(have, dict) or any(row in have and have[row] != digest for row, digest in wanted.items()):
            differ.append("store content")
    return differ


def _mismatch(path, differ: list[str]) -> CheckpointMismatchError:
    return CheckpointMismatchError(f"{path}: feature cache made for other {', '.join(differ)}; pass "
                                   "--rebuild-features to replace it, or give another path")


def recorded_identity(path) -> dict | None:
    """The attributes of the feature cache at `path`; None when nothing (or an empty folder) is there.

    Anything else at `path` (a file, a folder of other things, a render store, another Zarr group) is
    a PointADError naming it: a cache only ever replaces a cache.
    """
    path = Path(path)
    if path.is_symlink():
        raise PointADError(f"{path}: is a symbolic link, not a feature cache; give the path of the cache itself")
    if not path.exists():
        return None
    if not path.is_dir():
        raise PointADError(f"{path}: is a file, not a feature cache; choose another path")
    meta = path / "zarr.json"
    if not meta.is_file():
        if any(path.iterdir()):
            raise PointADError(f"{path}: is a folder that is not a feature cache (no zarr.json); choose another path")
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise PointADError(f"{meta}: unreadable ({exc}); not a feature cache, choose another path") from None
    if not isinstance(attrs, dict) or attrs.get("format") != CACHE_FORMAT:
        kind = attrs.get("format") if isinstance(attrs, dict) else None
        what = f"format {kind!r}" if kind else "no format"
        raise PointADError(f"{path}: is a Zarr group of another kind ({what}), not a feature cache; "
                           "choose another path")
    return attrs


def _remove_ours(path: Path) -> None:
    """Remove a leftover of ours (an interrupted build's temp, a replaced cache); refuse anything else."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        recorded_identity(path)
    except PointADError:
        raise PointADError(f"{path}: a leftover that is not a feature cache of ours; remove it by hand") from None
    shutil.rmtree(path)


def _needs_build(out: Path, identity: dict, rows: np.ndarray, rebuild: bool) -> str | None:
    """None when the cache at `out` serves (same identity, rows covered); else what building it means, in words.

    A differing cache without `rebuild` is a CheckpointMismatchError saying what differs.
    """
    found = recorded_identity(out)
    if found is None:
        return "built"
    differ = differences(found, identity)
    if not set(rows.tolist()) <= set(found.get("rows") or []):
        differ.append("rows")
    if not differ:
        return None
    if not rebuild:
        raise _mismatch(out, differ)
    return f"rebuilt ({', '.join(differ)} differed)"


def compute_features(backbone, store_path, rows: np.ndarray, out: Path, *, identity: dict | None = None,
                     rebuild: bool = False, **options) -> str:
    """Make `out` a feature cache of `rows`; return what was done: "reused", "built" or "rebuilt (... differed)".

    A cache with the same identity (`cache_identity`, and `row_content` of the rows) covering the rows is
    reused; one that differs is refused (CheckpointMismatchError saying what differs) unless `rebuild`;
    anything but a cache at `out` is refused (`recorded_identity`). Building holds the writer lock of `out`
    (a second writer gets LockedError) and writes atomically. identity: `cache_identity` if already
    computed; options (device, batch_size, autocast, dtype, progress) go to `_write_features`.
    """
    out = Path(out)
    rows = np.asarray(rows, dtype=np.int64)
    identity = dict(identity or cache_identity(backbone, store_path))
    identity.setdefault("row_content", row_content(store_path, rows))
    if _needs_build(out, identity, rows, rebuild) is None:
        return "reused"  # readers never lock
    with writer_lock(out, "writing a feature cache"):
        action = _needs_build(out, identity, rows, rebuild)  # again: another writer may have just built it
        if action is None:
            return "reused"
        _write_features(backbone, store_path, rows, out, identity, **options)
    return action


def _write_features(backbone, store_path, rows: np.ndarray, out: Path, identity: dict, *, device="cpu",
                    batch_size: int = 4, autocast: bool = False, dtype: str = "float32", progress=None) -> None:
    """Write the cache into a temp group beside `out`, then rename it into place (the caller holds the lock).

    A kill leaves at most the temp group (or the replaced cache under its `.old` name): never a half cache
    at `out`; both are ours by their attributes and are removed by the next build. An error (a damaged chunk,
    a full disk) removes the temp group at once.
    """
    store = open_store(store_path)
    check_image_size(backbone.config, store.attrs.image_size, store_path)
    tmp, old = out.with_name(f".{out.name}.pointad-tmp"), out.with_name(f".{out.name}.pointad-old")
    _remove_ours(tmp)
    _remove_ours(old)
    group = zarr.open_group(tmp, mode="w", attributes=identity | {"rows": rows.tolist(), "dtype": dtype})
    try:
        _fill(group, backbone, store, rows, device, batch_size, autocast, dtype, progress)
    except BaseException:
        _remove_ours(tmp)  # made just above
        raise
    if (out / "zarr.json").exists():
        os.replace(out, old)  # a cache of ours (checked by the caller); an empty folder is renamed over
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _fill(group, backbone, store, rows: np.ndarray, device, batch_size: int, autocast: bool, dtype: str,
          progress) -> None:
    """The `global` and `patches` arrays of a new cache group, batch by batch."""
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


class FeatureCache:
    """Read side of a feature cache; `get(rows)` returns (global (B, V, D), patches (L, B*V, G*G, D)) float32.

    The first rows of the cache, as many as fit in `memory_limit` bytes (`nbytes`: every row has the same
    size), are loaded once onto `device`: epochs then never read them from disk (on a GPU, re-reading from
    disk costs more than re-running the vision tower). The other rows are read per batch, so memory stays
    bounded whatever the number of rows; a row gives the same values from memory or from disk.
    """

    LOAD_ROWS = 16  # rows copied to the device at a time: the host holds at most this many extra while loading

    def __init__(self, path: Path, identity: dict, device="cpu", memory_limit: int = 8 * 2**30):
        """identity: `cache_identity` of the model and store the features must be of (else CheckpointMismatchError)."""
        self.path = Path(path)
        found = recorded_identity(self.path)
        if found is None:
            raise PointADError(f"{self.path}: no feature cache there")
        differ = differences(found, identity)
        if differ:
            raise _mismatch(self.path, differ)
        group = zarr.open_group(self.path, mode="r")
        self.position = {row: i for i, row in enumerate(found["rows"])}
        self.global_array, self.patch_array = group["global"], group["patches"]
        n = self.patch_array.shape[0]
        row_bytes = (self.patch_array.nbytes + self.global_array.nbytes) // max(n, 1)
        self.kept = min(n, max(memory_limit, 0) // row_bytes) if row_bytes else n
        self.nbytes = self.kept * row_bytes
        self.loaded = None
        if self.kept:
            self.loaded = tuple(torch.empty(self.kept, *array.shape[1:], dtype=_torch_dtype(array.dtype),
                                            device=device) for array in (self.global_array, self.patch_array))
            for start in range(0, self.kept, self.LOAD_ROWS):
                stop = min(start + self.LOAD_ROWS, self.kept)
                for array, loaded in zip((self.global_array, self.patch_array), self.loaded):
                    loaded[start:stop] = torch.from_numpy(array[start:stop])

    def covers(self, rows) -> bool:
        return all(int(r) in self.position for r in rows)

    def get(self, rows, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        where = np.array([self.position[int(r)] for r in rows], dtype=np.int64)
        in_memory = where < self.kept
        parts = []
        for array, loaded in zip((self.global_array, self.patch_array), self.loaded or (None, None)):
            out = torch.empty(len(where), *array.shape[1:], dtype=torch.float32, device=device)
            if in_memory.any():
                out[torch.from_numpy(in_memory).to(device)] = \
                    loaded[torch.from_numpy(where[in_memory]).to(loaded.device)].float().to(device)
            if not in_memory.all():
                read = array.get_orthogonal_selection((where[~in_memory].tolist(),))
                out[torch.from_numpy(~in_memory).to(device)] = torch.from_numpy(read).float().to(device)
            parts.append(out)
        global_feature, patches = parts
        b, layers, v = patches.shape[:3]
        patches = patches.permute(1, 0, 2, 3, 4).reshape(layers, b * v, *patches.shape[3:])
        return global_feature, patches


def _torch_dtype(dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=np.dtype(str(dtype)))).dtype
