"""Training samples from the render store (SPEC 4, 6): which rows, and a torch Dataset over them.

Reads only through `shared.store`; never touches geometry. Items hold the per-point arrays the
losses need; `collate` trims the padding to the longest cloud of the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.errors import PointADError
from shared.store import RenderStore, open_store

POINT_FIELDS = ("pixel", "visible", "valid", "label", "proxy")
VIEW_FIELDS = ("mask",)


def training_rows(store: RenderStore, dataset: str | None, class_name: str) -> np.ndarray:
    """Complete rows of the class's test split (the datasets' train splits hold normal samples only)."""
    datasets = sorted({store.identity(i)["dataset"] for i in range(len(store))})
    if dataset is None:
        if len(datasets) != 1:
            raise PointADError(f"{store.path}: holds datasets {', '.join(datasets)}; pass --dataset")
        dataset = datasets[0]
    if dataset not in datasets:
        raise PointADError(f"{store.path}: no dataset '{dataset}' (present: {', '.join(datasets) or 'none'})")
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


class StoreSamples(torch.utils.data.Dataset):
    """Item i = row rows[i]: {"row", "sample_label", "mask" (V,S,S), "pixel" (V,P,2), "visible" (V,P),
    "valid" (P,), "label" (P,), "proxy" (P,)} as tensors. Opens the store lazily (one per worker)."""

    def __init__(self, store_path, rows: np.ndarray):
        self.store_path = store_path
        self.rows = np.asarray(rows, dtype=np.int64)
        self._store: RenderStore | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if self._store is None:
            self._store = open_store(self.store_path)
        row = int(self.rows[i])
        arrays = self._store.read_batch([row], POINT_FIELDS + VIEW_FIELDS + ("n_points",))
        item = {name: torch.from_numpy(np.ascontiguousarray(value[0])) for name, value in arrays.items()}
        item["row"] = torch.tensor(row)
        item["sample_label"] = torch.tensor(self._store.identity(row)["label"])
        return item

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None  # zarr handles stay in the process that opened them
        return state


def collate(items: list[dict]) -> dict:
    """Stack items, cutting the point axis to the batch's largest n_points (padding carries no signal)."""
    keep = int(max(int(item["n_points"]) for item in items))
    batch = {}
    for name in items[0]:
        stacked = torch.stack([item[name] for item in items])
        if name in ("pixel", "visible"):
            stacked = stacked[:, :, :keep]
        elif name in ("valid", "label", "proxy"):
            stacked = stacked[:, :keep]
        batch[name] = stacked
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
