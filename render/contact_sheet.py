"""`render show`: a PNG contact sheet of one stored sample (views, rendered masks, visible points)."""

from __future__ import annotations

import numpy as np

from ..shared.store import StoredSample

NORMAL_COLOUR = np.array([40, 170, 60], np.uint8)
ANOMALY_COLOUR = np.array([220, 30, 30], np.uint8)


def contact_sheet(sample: StoredSample) -> np.ndarray:
    """(3 S, V S, 3) uint8: row 1 the views, row 2 the rendered masks, row 3 each view with its
    visible points painted at their projected pixels (green normal, red anomalous)."""
    n = int(sample.n_points)
    views = sample.image
    masks = np.repeat(sample.mask[..., None] * 255, 3, axis=-1).astype(np.uint8)
    overlay = views.copy()
    labels = sample.label[:n].astype(bool)
    for k in range(len(views)):
        seen = sample.visible[k, :n]
        u, v = sample.pixel[k, :n, 0], sample.pixel[k, :n, 1]
        overlay[k, v[seen & ~labels], u[seen & ~labels]] = NORMAL_COLOUR
        overlay[k, v[seen & labels], u[seen & labels]] = ANOMALY_COLOUR
    rows = [np.concatenate(list(block), axis=1) for block in (views, masks, overlay)]
    return np.concatenate(rows, axis=0)
