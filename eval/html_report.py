"""The page of `eval report --html DIR` (design §7.4): one self-contained `report.html` that opens offline.

It holds, per report (test dataset): the header, the metric tables of every protocol and block (the paper's
value and the difference beside ours with --compare-paper), and per test class the figures that
`eval.report_figures.write_class_figures` wrote for this run: the ROC and PRO plots, and per drawn sample
its views with their maps, its RGB map and an interactive 3D viewer of its points coloured by score, with
buttons that switch to the multimodal score or the ground truth. The viewer is plotly's scatter3d; plotly.js
is inlined once from the plotly package (`plotly.offline.get_plotlyjs`), images are PNG data URIs, so the
page fetches nothing. The viewer shows a display subsample of at most `VIEWER_POINTS` points per sample
(uniform, fixed seed); the PLY files beside the page hold every point.

Every number of a table is the JSON report's (`report.to_records`), written as the markdown report writes
it (percent, one decimal) and, exactly, in the cell's `data-value` attribute.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..shared.errors import InputFileError, PointADError
from ..shared.io import atomic_path, os_error
from ..shared.names import printable
from .class_metrics import METRICS
from .figures import PLY_SCALE_COMMENT
from .report import MEAN_ROW, Report, to_records
from .report_figures import class_folder, file_stem

PAGE_NAME = "report.html"
VIEWER_POINTS = 10_000  # points per sample in the 3D viewer (a display subsample above that)
SUBSAMPLE_SEED = 0
EXTRA = "html"  # the optional dependency group that brings plotly
FRESH_SLACK_S = 1.0  # file times are kept with a coarse clock: a file written just after `since` may read earlier
GROUND_TRUTH_COLOURS = [[0.0, "#c8c8c8"], [1.0, "#d62728"]]  # normal grey, anomalous red


def require_plotly() -> None:
    """Raise PointADError naming the extra to install when plotly is missing (checked before any scoring)."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise PointADError(f"--html needs plotly: pip install 'pointad-toolkit[{EXTRA}]'") from None


# --- our own scored PLY, read back -------------------------------------------------------------------------

class ScoredCloud(NamedTuple):
    """A PLY of `figures.write_scored_ply`: points (P, 3) float64, scores (P,) float32, labels (P,) uint8 or
    None, scale (vmin, vmax) of its colours or None."""

    points: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None
    scale: tuple[float, float] | None


_PLY_TYPES = {"double": "<f8", "float": "<f4", "uchar": "u1"}
_HEADER_LIMIT = 1 << 16


def read_scored_ply(path) -> ScoredCloud:
    """Read a binary little-endian PLY written by `figures.write_scored_ply`; InputFileError naming the file
    for anything else (another format, a missing x/y/z/score property, a truncated body)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise os_error(exc, path) from None
    end = data.find(b"end_header\n", 0, _HEADER_LIMIT)
    if not data.startswith(b"ply\n") or end < 0:
        raise InputFileError(f"{path}: not a PLY file with a header (no 'ply' ... 'end_header')")
    lines = data[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise InputFileError(f"{path}: not a binary little-endian PLY")
    count, fields, scale = None, [], None
    for line in lines:
        words = line.split()
        if words[:2] == ["element", "vertex"] and len(words) == 3 and words[2].isdigit():
            count = int(words[2])
        elif words[:1] == ["element"]:
            raise InputFileError(f"{path}: element {' '.join(words[1:2])} besides vertex; not a scored cloud")
        elif words[:1] == ["property"]:
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise InputFileError(f"{path}: property '{' '.join(words[1:])}' is not one of a scored cloud")
            fields.append((words[2], _PLY_TYPES[words[1]]))
        elif line.startswith(f"comment {PLY_SCALE_COMMENT} "):
            scale = _scale(words[3:5])
    names = [name for name, _ in fields]
    missing = [name for name in ("x", "y", "z", "score") if name not in names]
    if count is None or missing or len(set(names)) != len(names):
        raise InputFileError(f"{path}: no vertex count, a repeated property or no {'/'.join(missing)}")
    dtype = np.dtype(fields)
    body = data[end + len(b"end_header\n"):]
    if len(body) < count * dtype.itemsize:
        raise InputFileError(f"{path}: truncated: {len(body)} bytes of vertices, {count} need "
                             f"{count * dtype.itemsize}")
    vertex = np.frombuffer(body, dtype, count)
    points = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    labels = np.asarray(vertex["label"], np.uint8) if "label" in names else None
    return ScoredCloud(points, np.asarray(vertex["score"], np.float32), labels, scale)


def _scale(words) -> tuple[float, float] | None:
    try:
        low, high = float(words[0]), float(words[1])
    except (IndexError, ValueError):
        return None
    return (low, high) if math.isfinite(low) and math.isfinite(high) and high > low else None


def display_subsample(count: int, limit: int = VIEWER_POINTS, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """Sorted indices of at most `limit` of `count` points: all of them, or a uniform draw without
    replacement (numpy's default_rng(seed)), the same on every run."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


# --- the page's parts ---------------------------------------------------------------------------------------

def _text(value) -> str:
    """A name from data as HTML text: controls and bidi overrides escaped (`printable`), then HTML-escaped."""
    return html.escape(printable(value), quote=True)


def _number(value) -> str:
    """A data-value attribute: repr of a float, '' for None."""
    return "" if value is None else repr(float(value))


def _percent(mean, std, runs: int) -> str:
    """As the markdown report: 'n/a', '92.3' or '92.3 ± 1.0' (percent)."""
    if runs == 0 or mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" if runs == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def metric_tables(report: Report) -> str:
    """One <table class="metrics"> per protocol and block, rows = classes + mean, from `to_records`."""
    parts = []
    records = to_records(report)
    for protocol in report.header["protocols"]:
        for block in report.blocks:
            compare = bool((report.paper or {}).get(block))
            head = "".join(f"<th>{t}</th><th>paper</th><th>Δ</th>" if compare else f"<th>{t}</th>"
                           for t in METRICS.values())
            rows = []
            for record in (r for r in records if (r["protocol"], r["block"]) == (protocol, block)):
                name = record["class"]
                cells = []
                for title in METRICS.values():
                    mean, std, runs = record[title], record[f"{title} std"], record[f"{title} runs"]
                    cells.append(f'<td data-metric="{title}" data-kind="ours" data-value="{_number(mean)}" '
                                 f'data-std="{_number(std)}" data-runs="{runs}">{_percent(mean, std, runs)}</td>')
                    if compare:
                        theirs, diff = record[f"{title} paper"], record[f"{title} diff"]
                        cells.append(f'<td data-metric="{title}" data-kind="paper" data-value="{_number(theirs)}">'
                                     f'{"-" if theirs is None else f"{100 * theirs:.1f}"}</td>')
                        cells.append(f'<td data-metric="{title}" data-kind="diff" data-value="{_number(diff)}">'
                                     f'{"-" if diff is None else f"{100 * diff:+.1f}"}</td>')
                shown = f"<strong>{MEAN_ROW}</strong>" if name == MEAN_ROW else _text(name)
                rows.append(f'<tr data-class="{_text(name)}"><th scope="row">{shown}</th>{"".join(cells)}</tr>')
            parts.append(f'<h3>{block} <span class="protocol">({protocol})</span></h3>\n'
                         f'<table class="metrics" data-protocol="{protocol}" data-block="{block}">'
                         f'<thead><tr><th>class</th>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows)
                         + "\n</tbody></table>")
    return "\n".join(parts)


def header_list(report: Report) -> str:
    """The report's header (model, method, setting, data, training classes, protocols, runs, paper) as a <dl>."""
    h = report.header
    fields = [("model", h["model"]), ("method", h["method"]), ("setting", h["setting"]),
              ("test dataset", h["dataset"]),
              ("training class(es)", ", ".join(h["training_classes"]) or "none (no training)"),
              ("protocol(s)", ", ".join(h["protocols"])), ("runs", h["runs"]), ("store", h["store"])]
    if "paper" in h:
        fields.append(("paper", h["paper"]))
    return '<dl class="header">' + "".join(f"<dt>{k}</dt><dd>{_text(v)}</dd>" for k, v in fields) + "</dl>"


def page_png(path: Path) -> bytes:
    """The PNG as the page holds it: at most 256 colours (median cut, no dither; the maps' jet ramp and the
    plots survive it), or the file's own bytes when those are smaller. The figure files keep every colour."""
    original = path.read_bytes()
    try:
        with Image.open(io.BytesIO(original)) as image:
            fewer = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: not a readable PNG ({exc})") from None
    buffer = io.BytesIO()
    fewer.save(buffer, format="PNG", optimize=True)
    return min(original, buffer.getvalue(), key=len)


def _image(path: Path, alt: str, css: str) -> str:
    data = base64.b64encode(page_png(path)).decode("ascii")
    return f'<img class="{css}" alt="{_text(alt)}" src="data:image/png;base64,{data}">'


def viewer_figure(cloud: ScoredCloud, multimodal: ScoredCloud | None, limit: int = VIEWER_POINTS):
    """A plotly Figure: the (subsampled) points as one scatter3d per colouring, the point score shown first,
    buttons to switch to the multimodal score (when given) and the ground truth (when the PLY has labels).
    Each score is coloured on its PLY's colour scale (shared by the class's samples), jet like the maps."""
    import plotly.graph_objects as go
    keep = display_subsample(len(cloud.points), limit)
    x, y, z = (cloud.points[keep, axis].astype(np.float32) for axis in range(3))
    layers = [("point score", cloud.scores[keep], cloud.scale, "Jet")]
    if multimodal is not None and len(multimodal.points) == len(cloud.points):
        layers.append(("multimodal score", multimodal.scores[keep], multimodal.scale, "Jet"))
    if cloud.labels is not None:
        layers.append(("ground truth", cloud.labels[keep], (0.0, 1.0), GROUND_TRUTH_COLOURS))
    traces = []
    for k, (name, values, scale, colours) in enumerate(layers):
        low, high = scale if scale is not None else (float(values.min()), float(values.max()) + 1e-6)
        bar = (dict(title=dict(text="ground truth"), tickvals=[0, 1], ticktext=["normal", "anomalous"])
               if name == "ground truth" else dict(title=dict(text=name)))
        traces.append(go.Scatter3d(x=x, y=y, z=z, mode="markers", name=name, visible=k == 0,
                                   marker=dict(size=2, color=values, colorscale=colours, cmin=low, cmax=high,
                                               colorbar=bar),
                                   hovertemplate=f"{name} %{{marker.color:.4f}}<extra></extra>"))
    buttons = [dict(label=name, method="restyle", args=[{"visible": [j == k for j in range(len(layers))]}])
               for k, (name, *_) in enumerate(layers)]
    figure = go.Figure(traces)
    figure.update_layout(height=480, margin=dict(l=0, r=0, t=40, b=0), showlegend=False,
                         scene=dict(aspectmode="data"),
                         updatemenus=[dict(type="buttons", direction="right", x=0.0, y=1.0, xanchor="left",
                                           yanchor="bottom", buttons=buttons, showactive=True)])
    return figure


def script_json(value) -> str:
    """JSON text safe inside a <script> element: '<', '>' and '&' (only ever inside JSON strings) escaped."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c").replace(
        ">", "\\u003e").replace("&", "\\u0026")


def viewer_div(div_id: str, figure) -> str:
    """The viewer's empty <div> and its figure as JSON beside it; `DRAW_VIEWERS` draws it when scrolled into
    view (software WebGL takes seconds per viewer: a page of many would otherwise open slowly)."""
    spec = json.loads(figure.to_json())  # plotly's encoder: numpy arrays as typed-array base64 ("bdata")
    for trace in spec["data"][1:]:  # every colouring has the first one's points: sent once, copied back in the page
        if all(trace[axis] == spec["data"][0][axis] for axis in "xyz"):
            del trace["x"], trace["y"], trace["z"]
    spec["config"] = {"displaylogo": False, "responsive": True}
    return (f'<div class="viewer"><div id="{div_id}" class="viewer-plot"></div>'
            f'<script type="application/json" id="{div_id}-data">{script_json(spec)}</script></div>')


# Draws each viewer once it comes near the window; data-drawn is "done" when plotly has drawn it.
DRAW_VIEWERS = """
(function () {
  function draw(div) {
    if (div.dataset.drawn) { return; }
    div.dataset.drawn = "started";
    var spec = JSON.parse(document.getElementById(div.id + "-data").textContent);
    spec.data.forEach(function (trace) {
      if (!trace.x) { trace.x = spec.data[0].x; trace.y = spec.data[0].y; trace.z = spec.data[0].z; }
    });
    Plotly.newPlot(div, spec.data, spec.layout, spec.config).then(function () { div.dataset.drawn = "done"; });
  }
  var divs = document.querySelectorAll("div.viewer-plot");
  if (!("IntersectionObserver" in window)) { divs.forEach(draw); return; }
  var near = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) { near.unobserve(entry.target); draw(entry.target); }
    });
  }, {rootMargin: "300px"});
  divs.forEach(function (div) { near.observe(div); });
})();
"""


def _fresh(path: Path, since: float | None) -> bool:
    try:
        written = path.stat().st_mtime
    except OSError:
        return False
    return since is None or written >= since - FRESH_SLACK_S


def class_section(report: Report, name: str, figures: Path | None, number: list[int], since: float | None) -> str:
    """A test class's ROC/PRO plots and drawn samples (views, RGB map, 3D viewer), from the figures folder;
    files older than `since` (another run's) are left out. number: the page's running viewer count."""
    parts = [f'<section class="class" data-class="{_text(name)}"><h3>{_text(name)}</h3>']
    folder = class_folder(figures, name) if figures is not None else None
    plots = [] if folder is None else [(folder / f"{kind}.png", kind) for kind in ("roc", "pro")]
    plots = [_image(path, f"{name} {kind}", "plot") for path, kind in plots if _fresh(path, since)]
    if not plots:
        parts.append('<p class="note">No figures of this class (drawn from the first run, for the classes '
                     'it tests).</p></section>')
        return "\n".join(parts)
    parts.append('<div class="plots">' + "".join(plots) + "</div>")
    seen = set()
    for record in report.samples:
        sample_id = record["sample_id"]
        if record["class"] != name or sample_id in seen:
            continue
        seen.add(sample_id)
        stem = file_stem(sample_id)
        views, rgb = folder / f"{stem}_views.png", folder / f"{stem}_rgb.png"
        ply, multimodal = folder / f"{stem}_point.ply", folder / f"{stem}_multimodal.ply"
        if not _fresh(views, since):
            continue
        kind = "anomalous" if record["label"] else "good"
        parts.append(f'<section class="sample" data-sample="{_text(sample_id)}"><h4>{_text(sample_id)} '
                     f'<span class="kind {kind}">{kind}</span></h4>')
        parts.append(_image(views, f"{sample_id} views and maps", "views"))
        if _fresh(rgb, since):
            parts.append(_image(rgb, f"{sample_id} RGB map", "rgb"))
        if _fresh(ply, since):
            cloud = read_scored_ply(ply)
            both = read_scored_ply(multimodal) if _fresh(multimodal, since) else None
            number[0] += 1
            shown = min(len(cloud.points), VIEWER_POINTS)
            parts.append(viewer_div(f"viewer-{number[0]}", viewer_figure(cloud, both)))
            parts.append(f'<p class="note">3D: {shown:,} of {len(cloud.points):,} '
                         f'points{" (a display subsample, uniform)" if shown < len(cloud.points) else ""}; every '
                         f'point with its score and label: {_text(ply.name)} in the figures folder.</p>')
        parts.append("</section>")
    parts.append("</section>")
    return "\n".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table.metrics { border-collapse: collapse; margin-bottom: 1em; font-variant-numeric: tabular-nums; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
table.metrics th[scope=row] { text-align: left; }
dl.header { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; }
dl.header dt { font-weight: bold; }
img.plot { width: 420px; max-width: 48%; }
img.views, img.rgb { max-width: 100%; }
.kind.anomalous { color: #d62728; } .kind.good { color: #2ca02c; }
.note { color: #666; font-size: 0.9em; }
.viewer { max-width: 900px; }
.viewer-plot { height: 480px; width: 100%; }
"""


def html_page(reports: list[Report], figures=None, since: float | None = None) -> str:
    """The whole page as text (module docstring). figures: the folder `write_class_figures` wrote (None: no
    per-class figures); since: leave out figure files older than this (a time.time() value)."""
    from plotly.offline import get_plotlyjs
    figures = None if figures is None else Path(figures)
    number = [0]
    body = []
    for report in reports:
        body.append(f'<section class="report" data-dataset="{_text(report.header["dataset"])}">'
                    f'<h1>PointAD evaluation: {_text(report.header["dataset"])}</h1>')
        body.append(header_list(report))
        body.append('<h2>Metrics</h2><p class="note">Percent; with several runs, mean ± population std over the '
                    'runs; the protocol of each table is in its title.</p>')
        body.append(metric_tables(report))
        body.append("<h2>Classes</h2>")
        body += [class_section(report, name, figures, number, since) for name in report.classes]
        body.append("</section>")
    body.append(f"<script>{DRAW_VIEWERS}</script>")
    title = ", ".join(_text(r.header["dataset"]) for r in reports)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>PointAD evaluation: {title}'
            f'</title>\n<style>{STYLE}</style>\n<script type="text/javascript">{get_plotlyjs()}</script>\n'
            f'</head><body>\n' + "\n".join(body) + "\n</body></html>\n")


def write_html_report(reports: list[Report], folder, figures=None, since: float | None = None) -> Path:
    """Write `html_page` to folder/report.html atomically (the folder created); return its path."""
    path = Path(folder) / PAGE_NAME
    text = html_page(reports, figures, since)
    try:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise os_error(exc, path) from None
    return path
