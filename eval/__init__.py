"""Evaluation stage (SPEC 7): per-sample scores, metrics and reports."""

from pointad.eval.metrics import aupro_graph, aupro_organized, aupro_pointad_compat, image_metrics, point_auroc
from pointad.eval.report import ReportConfig, build_report, write_report
from pointad.eval.scoring import SampleScores, score_store, smooth_graph, smooth_organized

__all__ = ["aupro_graph", "aupro_organized", "aupro_pointad_compat", "image_metrics", "point_auroc",
           "ReportConfig", "build_report", "write_report", "SampleScores", "score_store", "smooth_graph",
           "smooth_organized"]
