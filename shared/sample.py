"""The `Sample` record every dataset reader yields (design §2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "validation", "test")
GOOD = "good"


@dataclass(frozen=True, kw_only=True)
class SampleRef:
    """Where one sample lives on disk; listing these reads no data.

    `sample_id` is the path of the sample's main file relative to the dataset root
    (or, for multi-file samples such as raw Eyecandies, its common prefix).
    `files` maps a role ("xyz", "rgb", "gt", "depth", ...) to an absolute path.
    """

    dataset: str
    class_name: str
    split: str
    defect_type: str
    sample_id: str
    files: dict

    @property
    def label(self) -> int:
        """1 for an anomalous sample, 0 for a good one."""
        return int(self.defect_type != GOOD)


@dataclass(frozen=True, kw_only=True, eq=False)
class Sample:
    """One preprocessed point cloud with its ground truth.

    points: (P, 3) float32, finite, only valid points.
    point_labels: (P,) uint8 in {0, 1}, 1 = anomalous point.
    grid_hw: (H, W) of the organized grid, (0, 0) for an unorganized cloud.
    grid_index: (P,) int32 row * W + col of each point in the grid, or None when unorganized.
    rgb: (H, W, 3) uint8 aligned with the grid, or None.
    grid_mask: (H, W) uint8 in {0, 1}, 2D ground truth on the grid, or None.
    """

    dataset: str
    class_name: str
    split: str
    defect_type: str
    sample_id: str
    label: int
    points: np.ndarray
    point_labels: np.ndarray
    grid_hw: tuple[int, int] = (0, 0)
    grid_index: np.ndarray | None = None
    rgb: np.ndarray | None = None
    grid_mask: np.ndarray | None = None

    def __post_init__(self):
        # Readers are ours; a broken invariant here is a bug, not bad user input.
        p = self.points.shape[0]
        if self.points.shape != (p, 3) or self.points.dtype != np.float32:
            raise TypeError(f"{self.sample_id}: points must be (P, 3) float32, got {self.points.shape} {self.points.dtype}")
        if self.point_labels.shape != (p,) or self.point_labels.dtype != np.uint8:
            raise TypeError(f"{self.sample_id}: point_labels must be (P,) uint8")
        if self.grid_index is not None and (self.grid_index.shape != (p,) or self.grid_index.dtype != np.int32):
            raise TypeError(f"{self.sample_id}: grid_index must be (P,) int32")
        if self.rgb is not None and self.rgb.shape != (*self.grid_hw, 3):
            raise TypeError(f"{self.sample_id}: rgb shape {self.rgb.shape} does not match grid {self.grid_hw}")

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def organized(self) -> bool:
        return self.grid_index is not None
