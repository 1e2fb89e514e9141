"""Training samples from the render store (design §4, §6): which rows, and a torch Dataset over them.

Reads only through `shared.store`; never touches geometry. Items hold the per-point arrays the
losses need, cut to the sample's own points; `collate` pads to the longest cloud of the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from ..shared.errors import PointADError
from ..shared.store import RenderStore, open_store

POINT_FIELDS = ("pixel", "visible", "valid", "label", "proxy")
VIEW_FIELDS = ("mask",)


def training_rows(store: RenderStore, dataset: str | None, class_name: str) -> np.ndarray:
    """Complete rows of the class's test split (the datasets' train splits hold normal samples only)."""
    dataset = store.choose_dataset(dataset)
    rows = store.indices(dataset=dataset, class_name=class_name, split="test")
    if rows.size == 0:
        classes = sorted({store.identity(i)["class_name"] for i in store.indices(dataset=dataset)})
        raise PointADError(f"{store.path}: no complete test samples of class '{class_name}' in dataset "
                           f"'{dataset}' (classes: {', '.join(classes)})")
    labels = np.array([store.identity(int(i))["label"] for i in rows])
    if labels.min() == labels.max():
        raise PointADError(f"{store.path}: class '{class_name}' test split has only "
                           f"{'anomalous' if labels[0] else 'good'} samples; training needs both")
    return rows


PAD_VALUES = {"pixel": 0, "visible": False, "valid": False, "label": 0, "proxy": -1}


class StoreSamples(torch.utils.data.Dataset):
    """Item i = row rows[i]: {"row", "sample_label", "mask" (V,S,S), "pixel" (V,n,2), "visible" (V,n),
    "valid" (n,), "label" (n,), "proxy" (n,)} as tensors, n = the sample's own point count.

    Opens the store lazily (one per worker). Items never change and training reads each one every
    epoch, so the first ones read are kept in memory while their bytes (`kept_bytes`, counted from the
    tensors' storage) stay within `memory_limit`; the others are read again each time, so memory is
    bounded whatever the number of rows. Nothing is evicted: under a uniform random order any cache of
    K items serves the same expected share of reads, and this one never churns. DataLoader workers keep
    nothing: they live for one epoch, in which each item is read once.
    """

    def __init__(self, store_path, rows: np.ndarray, memory_limit: int = 4 * 2**30):
        self.store_path = store_path
        self.rows = np.asarray(rows, dtype=np.int64)
        self.memory_limit = memory_limit
        self._store: RenderStore | None = None
        self._kept: dict[int, dict] = {}
        self._kept_bytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if i in self._kept:
            return self._kept[i]
        if self._store is None:
            self._store = open_store(self.store_path)
        row = int(self.rows[i])
        arrays = self._store.read_batch([row], POINT_FIELDS + VIEW_FIELDS + ("n_points",))
        n = int(arrays["n_points"][0])
        item = {}
        for name, value in arrays.items():
            value = value[0]
            if name in ("pixel", "visible"):
                value = value[:, :n]
            elif name in PAD_VALUES:
                value = value[:n]
            item[name] = torch.from_numpy(np.array(value, ndmin=1))  # a copy: a view would hold the padded row
        item["row"] = torch.tensor(row)
        item["sample_label"] = torch.tensor(self._store.identity(row)["label"])
        size = sum(t.untyped_storage().nbytes() for t in item.values())
        if self._kept_bytes + size <= self.memory_limit and torch.utils.data.get_worker_info() is None:
            self._kept[i] = item
            self._kept_bytes += size
        return item

    @property
    def kept_bytes(self) -> int:
        """Bytes of the items held in memory (never more than `memory_limit`)."""
        return self._kept_bytes

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None  # zarr handles stay in the process that opened them
        return state


def collate(items: list[dict]) -> dict:
    """Stack items, padding the point axis to the batch's largest cloud with the store's fill values."""
    keep = max(int(item["n_points"]) for item in items)
    batch = {}
    for name in items[0]:
        if name in PAD_VALUES:
            axis = 1 if name in ("pixel", "visible") else 0
            padded = []
            for item in items:
                value = item[name]
                missing = keep - value.shape[axis]
                if missing:
                    shape = list(value.shape)
                    shape[axis] = missing
                    value = torch.cat([value, torch.full(shape, PAD_VALUES[name], dtype=value.dtype)], dim=axis)
                padded.append(value)
            batch[name] = torch.stack(padded)
        else:
            batch[name] = torch.stack([item[name] for item in items])
    return batch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Positions (into the training rows) of each batch of an epoch, for one rank.

    The global order depends only on (seed, epoch); each global batch of `batch_size` is split
    into `world` contiguous parts, so W processes see exactly the samples one process would.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).numpy()
    batches = []
    for start in range(0, n, batch_size):
        part = np.array_split(order[start:start + batch_size], world)[rank]
        batches.append(part)
    return batches
