"""Evaluation stage (design §7): per-sample scores, metrics and reports.

Public API, imported on first use so that `import pointad.eval.metrics` loads neither torch nor Open3D.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "aupro_graph": ".metrics", "aupro_organized": ".metrics",
    "aupro_pointad_compat": ".metrics", "image_metrics": ".metrics",
    "point_auroc": ".metrics", "ReportConfig": ".options", "build_report": ".report",
    "write_report": ".report", "SampleScores": ".score_maps", "score_store": ".scoring",
    "smooth_graph": ".score_maps", "smooth_organized": ".score_maps",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'pointad.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)


def __dir__():
    return sorted([*globals(), *__all__])
