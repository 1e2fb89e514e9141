"""Evaluation stage (design §7): per-sample scores, metrics and reports.

Public API, imported on first use so that `import pointad.eval.metrics` loads neither torch nor Open3D.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "aupro_graph": "pointad.eval.metrics", "aupro_organized": "pointad.eval.metrics",
    "aupro_pointad_compat": "pointad.eval.metrics", "image_metrics": "pointad.eval.metrics",
    "point_auroc": "pointad.eval.metrics", "ReportConfig": "pointad.eval.report", "build_report": "pointad.eval.report",
    "write_report": "pointad.eval.report", "SampleScores": "pointad.eval.score_maps", "score_store": "pointad.eval.scoring",
    "smooth_graph": "pointad.eval.score_maps", "smooth_organized": "pointad.eval.score_maps",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'pointad.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__():
    return sorted([*globals(), *__all__])
