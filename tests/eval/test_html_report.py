"""`eval report --html DIR` (design §7.4): one self-contained page. Without a browser: the PLY reader, the
display subsample, the viewer's values, the tables against the JSON records, stale figures left out, the
one-line errors. In headless Chromium (Debian's chromium + chromium-driver, driven by selenium): no console
error, no request beyond the file itself and its data: URIs, a screenshot that is not blank, every 3D viewer
drawn (WebGL through SwiftShader), the ground truth switched on, and every number of the tables equal to
the JSON report's."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pointad.eval.cli import eval_
from pointad.eval.figures import write_scored_ply
from pointad.eval.html_report import (
    PAGE_NAME,
    VIEWER_POINTS,
    display_subsample,
    html_page,
    read_scored_ply,
    viewer_figure,
    write_html_report,
)
from pointad.eval.report import Report, attach_paper, to_json
from pointad.eval.report_figures import class_folder, file_stem
from pointad.shared.errors import InputFileError
from pointad.shared.names import printable

MVTEC = "synthetic-mvtec3d"
BASELINE = ["--method", "clip-rendering", "--model", "tiny", "--device", "cpu"]
TITLES = ("I-AUROC", "AP", "P-AUROC", "AUPRO")
HOSTILE = "<b>x</b>&amp;\u202e"  # a class name that is markup, an entity and a bidi override


# --- the PLY of write_scored_ply, read back ----------------------------------------------------------------

def test_scored_ply_reads_back_what_was_written(tmp_path):
    rng = np.random.default_rng(1)
    points, scores, labels = rng.normal(size=(257, 3)), rng.random(257).astype(np.float32), rng.integers(0, 2, 257)
    path = write_scored_ply(tmp_path / "a.ply", points, scores, 0.25, 0.75, labels=labels, comments=["x y"])
    cloud = read_scored_ply(path)
    np.testing.assert_array_equal(cloud.points, points)
    np.testing.assert_array_equal(cloud.scores, scores)
    np.testing.assert_array_equal(cloud.labels, labels)
    assert cloud.scale == (0.25, 0.75)
    unlabelled = read_scored_ply(write_scored_ply(tmp_path / "b.ply", points, scores))
    assert unlabelled.labels is None and unlabelled.scale == (float(scores.min()), float(scores.max()))


def test_a_truncated_or_foreign_ply_is_one_line_naming_it(tmp_path):
    path = write_scored_ply(tmp_path / "a.ply", np.zeros((10, 3)), np.zeros(10))
    cut = tmp_path / "cut.ply"
    cut.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InputFileError, match=r"^.*cut\.ply: truncated: 305 bytes of vertices, 10 need 310$"):
        read_scored_ply(cut)
    ascii_ply = tmp_path / "ascii.ply"
    ascii_ply.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(InputFileError, match="ascii.ply: not a binary little-endian PLY"):
        read_scored_ply(ascii_ply)


# --- the viewer's values --------------------------------------------------------------------------------------

def test_display_subsample_is_every_point_or_a_fixed_uniform_draw():
    np.testing.assert_array_equal(display_subsample(5, 10), np.arange(5))
    drawn = display_subsample(1000, 100)
    assert len(drawn) == len(set(drawn.tolist())) == 100 and np.all(np.diff(drawn) > 0) and drawn.max() < 1000
    np.testing.assert_array_equal(drawn, display_subsample(1000, 100))  # the same on every run
    assert 35 < (drawn < 500).sum() < 65  # uniform: about half in each half


def _decoded(value) -> np.ndarray:
    """A plotly array, typed-array JSON ({dtype, bdata}) or a list, as numpy."""
    import base64
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), np.dtype(value["dtype"]))
    return np.asarray(value)


def test_the_viewer_holds_the_ply_points_scores_and_labels(tmp_path):
    rng = np.random.default_rng(2)
    count = VIEWER_POINTS + 500
    points, labels = rng.normal(size=(count, 3)), (rng.random(count) < 0.1).astype(np.uint8)
    point = read_scored_ply(write_scored_ply(tmp_path / "p.ply", points, rng.random(count), 0.0, 2.0, labels=labels))
    both = read_scored_ply(write_scored_ply(tmp_path / "m.ply", points, rng.random(count), -1.0, 1.0, labels=labels))
    spec = json.loads(viewer_figure(point, both).to_json())
    keep = display_subsample(count)
    assert [t["name"] for t in spec["data"]] == ["point score", "multimodal score", "ground truth"]
    assert [t["visible"] for t in spec["data"]] == [True, False, False]
    for trace, values, scale in zip(spec["data"], (point.scores, both.scores, labels), ((0, 2), (-1, 1), (0, 1))):
        for axis in range(3):
            np.testing.assert_array_equal(_decoded(trace["xyz"[axis]]), points[keep, axis].astype(np.float32))
        np.testing.assert_array_equal(_decoded(trace["marker"]["color"]), values[keep].astype(np.float32))
        assert (trace["marker"]["cmin"], trace["marker"]["cmax"]) == scale
    buttons = spec["layout"]["updatemenus"][0]["buttons"]
    assert [b["args"][0]["visible"] for b in buttons] == [[True, False, False], [False, True, False],
                                                          [False, False, True]]


# --- the tables, parsed without a browser -----------------------------------------------------------------------

def _hand_report() -> Report:
    """Two runs on MVTec 3D-AD classes (cable_gland, bagel and a hostile name): means, stds, a missing value."""
    header = {"protocols": ["points", "pointad-compat"], "dataset": "mvtec3d", "model": "ViT-L-14-336",
              "method": "pointad", "setting": "one-vs-rest", "training_classes": ["carrot"],
              "training_datasets": ["mvtec3d"], "prompts": ["agnostic"], "runs": 2, "store": "s.zarr"}
    rng = np.random.default_rng(3)
    names = ["bagel", "cable_gland", HOSTILE, "mean"]
    values = {(p, b, n): {m: rng.random(2).tolist() for m in ("i_auroc", "ap", "p_auroc", "aupro")}
              for p in header["protocols"] for b in ("point", "multimodal") for n in names}
    values["points", "point", "bagel"]["aupro"] = [float("nan"), 0.5]  # one run: no ±
    values["points", "point", "cable_gland"]["ap"] = [float("nan")] * 2  # none: n/a
    return attach_paper(Report(header=header, blocks=("point", "multimodal"), classes=names[:3], values=values))


def _shown(value, std=None, runs=1) -> str:
    """A JSON value as the page must show it (percent, one decimal), written here independently."""
    if value is None or runs == 0:
        return "n/a"
    return f"{100 * value:.1f}" if runs == 1 else f"{100 * value:.1f} ± {100 * std:.1f}"


def _expected_cells(rows: list[dict]) -> dict:
    """{(protocol, block, class, metric, kind): (text, data-value)} from the JSON report's rows; the paper's
    columns in the blocks where the JSON has a paper value."""
    compared = {row["block"] for row in rows for title in TITLES if row.get(f"{title} paper") is not None}
    cells = {}
    for row in rows:
        key = (row["protocol"], row["block"], printable(row["class"]))
        for title in TITLES:
            cells[(*key, title, "ours")] = (_shown(row[title], row[f"{title} std"], row[f"{title} runs"]),
                                            row[title])
            if row["block"] in compared:
                paper, diff = row.get(f"{title} paper"), row.get(f"{title} diff")
                cells[(*key, title, "paper")] = ("-" if paper is None else f"{100 * paper:.1f}", paper)
                cells[(*key, title, "diff")] = ("-" if diff is None else f"{100 * diff:+.1f}", diff)
    return cells


class _Cells(HTMLParser):
    """The metric cells of a page: (protocol, block, class, metric, kind) -> (text, data-value)."""

    def __init__(self):
        super().__init__()
        self.cells, self.table, self.row, self.cell, self.text = {}, None, None, None, ""
        self.sources, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "src" in attrs:
            self.sources.append(attrs["src"])
        if "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "table" and "metrics" in attrs.get("class", ""):
            self.table = (attrs["data-protocol"], attrs["data-block"])
        elif tag == "tr" and self.table:
            self.row = attrs.get("data-class")
        elif tag == "td" and self.table:
            self.cell, self.text = (*self.table, self.row, attrs["data-metric"], attrs["data-kind"],
                                    attrs["data-value"]), ""

    def handle_data(self, data):
        if self.cell:
            self.text += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cell:
            *key, value = self.cell
            assert tuple(key) not in self.cells, key
            self.cells[tuple(key)] = (self.text, None if value == "" else float(value))
            self.cell = None
        elif tag == "table":
            self.table = None


def test_the_tables_are_the_json_reports_numbers_with_the_papers_beside_them():
    report = _hand_report()
    parser = _Cells()
    parser.feed(html_page([report]))
    assert parser.cells == _expected_cells(json.loads(to_json(report))["rows"])
    # Table 18, cable gland, PointAD: I-AUROC 53.7 printed beside ours
    assert parser.cells["points", "point", "cable_gland", "I-AUROC", "paper"][0] == "53.7"
    assert parser.cells["points", "point", "cable_gland", "AP", "ours"][0] == "n/a"
    assert parser.cells["points", "point", "bagel", "AUPRO", "ours"][0].count("±") == 0
    assert " ± " in parser.cells["points", "multimodal", "bagel", "AUPRO", "ours"][0]
    assert parser.sources == [] and parser.links == []  # nothing to fetch: no figures here, no <script src>


def test_a_class_name_is_text_never_markup():
    page = html_page([_hand_report()])
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;&amp;amp;\\u202e" in page


# --- figures: this run's only --------------------------------------------------------------------------------

def _figures(folder: Path, report: Report, sample_ids, old=()) -> None:
    """Write a class's roc/pro and each sample's views PNG and PLYs as write_class_figures names them; the
    files of the sample ids in `old` (and roc/pro when "plots" is in it) dated an hour back."""
    rng = np.random.default_rng(4)
    target = class_folder(folder, "cookie")
    target.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(png, format="PNG")
    written = {}
    for name in ("roc", "pro"):
        written.setdefault("plots", []).append(target / f"{name}.png")
    for sid in sample_ids:
        stem = file_stem(sid)
        written[sid] = [target / f"{stem}_views.png", target / f"{stem}_rgb.png"]
        write_scored_ply(target / f"{stem}_point.ply", rng.normal(size=(50, 3)), rng.random(50),
                         labels=rng.integers(0, 2, 50))
        written[sid].append(target / f"{stem}_point.ply")
    for paths in written.values():
        for path in paths:
            if path.suffix == ".png":
                path.write_bytes(png.getvalue())
    hour_ago = time.time() - 3600
    for key in old:
        for path in written[key]:
            os.utime(path, (hour_ago, hour_ago))


def _samples_report(sample_ids) -> Report:
    header = {"protocols": ["points"], "dataset": "d", "model": "m", "method": "clip-rendering",
              "setting": "one-vs-rest", "training_classes": [], "prompts": [], "runs": 1, "store": "s.zarr"}
    samples = [{"run": "r", "class": "cookie", "sample_id": sid, "label": k % 2} for k, sid in enumerate(sample_ids)]
    return Report(header=header, blocks=("point",), classes=["cookie"], values={}, samples=samples)


def test_figures_older_than_the_run_are_left_out(tmp_path):
    ids = ["cookie/test/hole/xyz/000.tiff", "cookie/test/good/xyz/001.tiff"]
    report = _samples_report(ids)
    _figures(tmp_path, report, ids, old=[ids[1]])
    since = time.time() - 60
    page = html_page([report], tmp_path, since=since)
    assert f'data-sample="{ids[0]}"' in page and f'data-sample="{ids[1]}"' not in page
    assert page.count('class="viewer-plot"') == 1 and page.count('class="plot"') == 2
    everything = html_page([report], tmp_path)  # since None: every file there
    assert everything.count('class="viewer-plot"') == 2
    _figures(tmp_path, report, ids, old=["plots"])  # a class drawn by an earlier run only
    assert "No figures of this class" in html_page([report], tmp_path, since=since)


# --- the command line ----------------------------------------------------------------------------------------

def test_html_without_plotly_names_the_extra_before_any_work(eval_store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)  # as if not installed: importing it raises ImportError
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), *BASELINE, "--dataset", MVTEC,
                                        "--html", str(tmp_path / "page")])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "Error: --html needs plotly: pip install 'pointad-toolkit[html]'"
    assert not (tmp_path / "page").exists()


def test_html_on_a_file_is_one_line(eval_store, tmp_path):
    blocker = tmp_path / "page"
    blocker.write_text("mine")
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), *BASELINE, "--dataset", MVTEC,
                                        "--html", str(blocker)])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (f"Error: {blocker}: is a file, not a folder; --html takes a folder: "
                                     f"{PAGE_NAME} is written in it")
    assert blocker.read_text() == "mine"


# --- headless Chromium ---------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (the project's setup, "
                                                              ".ci/setup.sh, installs Debian's chromium and "
                                                              "chromium-driver)")
# this machine's network is closed: without the background-networking flags Chromium's own connections are refused
# and logged; WebGL runs in software (SwiftShader), which Chromium now uses only when asked
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1280,1600"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromium is installed but chromedriver is not (Debian: apt-get install chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _load(driver, page: Path) -> dict:
    """Open the page; return its console errors (SEVERE) and the URLs it requested (not data:)."""
    driver.get_log("browser"), driver.get_log("performance")  # drop what came before
    driver.get(page.resolve().as_uri())
    events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    requested = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    return {"requested": sorted({u for u in requested if not u.startswith(("data:", "chrome:"))}),
            "severe": [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]}


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)


def _page_cells(driver) -> dict:
    """The metric cells as the browser's DOM has them: (protocol, block, class, metric, kind) -> (text, value)."""
    found = driver.execute_script("""
        return Array.from(document.querySelectorAll("table.metrics td")).map(function (td) {
          var table = td.closest("table");
          return [table.dataset.protocol, table.dataset.block, td.closest("tr").dataset.class, td.dataset.metric,
                  td.dataset.kind, td.textContent, td.dataset.value];
        });""")
    cells = {tuple(c[:5]): (c[5], None if c[6] == "" else float(c[6])) for c in found}
    assert len(cells) == len(found)
    return cells


def _drawn_viewers(driver) -> list[np.ndarray]:
    """Scroll to each viewer, wait until plotly has drawn it, check its scene; return its screenshots."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    shots = []
    for div in driver.find_elements(By.CSS_SELECTOR, "div.viewer-plot"):
        driver.execute_script("arguments[0].scrollIntoView()", div)
        WebDriverWait(driver, 120).until(lambda d, div=div: d.execute_script("return arguments[0].dataset.drawn",
                                                                                div) == "done")
        assert driver.execute_script("return !!arguments[0]._fullLayout.scene && "
                                     "!!arguments[0].querySelector('canvas')", div)
        shots.append(_png(div.screenshot_as_png))
    return shots


def _coloured(shot: np.ndarray) -> int:
    """Pixels of strong colour (a jet score or the ground truth's red): plotly's own frame is grey-blue."""
    return int(((shot.max(axis=2) - shot.min(axis=2)) > 120).sum())


@needs_chromium
@pytest.mark.slow
def test_the_page_in_chromium_draws_offline_and_shows_the_json_reports_numbers(eval_store, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    out = tmp_path / "page"
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), *BASELINE, "--dataset", MVTEC,
                                        "--classes", "cookie", "--protocol", "both", "--figure-samples", "1",
                                        "--report-format", "json", "--out", str(tmp_path / "r.json"),
                                        "--html", str(out)])
    assert result.exit_code == 0, result.output
    page = out / PAGE_NAME
    loaded = _load(browser, page)
    assert loaded["severe"] == [] and loaded["requested"] == [page.resolve().as_uri()], loaded
    shot = _png(browser.get_screenshot_as_png())
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # not blank
    assert _page_cells(browser) == _expected_cells(json.loads((tmp_path / "r.json").read_text())["rows"])
    shots = _drawn_viewers(browser)
    assert len(shots) == 2  # the class's anomalous and good sample (--figure-samples 1)
    assert all(_coloured(s) > 2000 for s in shots), [_coloured(s) for s in shots]
    # the ground truth, switched on by its button: the anomalous sample shows red points and no jet colours
    kinds = [s.text for s in browser.find_elements(By.CSS_SELECTOR, "section.sample span.kind")]
    assert sorted(kinds) == ["anomalous", "good"]
    bad = kinds.index("anomalous")
    viewer = browser.find_elements(By.CSS_SELECTOR, "div.viewer-plot")[bad]
    browser.execute_script("arguments[0].scrollIntoView()", viewer)
    button = [b for b in viewer.find_elements(By.CSS_SELECTOR, "g.updatemenu-button") if b.text == "ground truth"]
    button[0].click()
    WebDriverWait(browser, 60).until(lambda d: d.execute_script("return arguments[0]._fullData.map(t => t.visible)",
                                                                viewer) == [False, False, True])
    WebDriverWait(browser, 60).until(lambda d: _coloured(_png(viewer.screenshot_as_png)) < _coloured(shots[bad]))
    truth = _png(viewer.screenshot_as_png)
    red = (np.abs(truth - np.array([214, 39, 40])).max(axis=2) < 40).sum()
    assert red > 20, red
    assert loaded["severe"] + [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@needs_chromium
@pytest.mark.slow
def test_the_papers_values_in_chromium_equal_the_json_reports(tmp_path, browser):
    report = _hand_report()
    page = write_html_report([report], tmp_path / "page")
    loaded = _load(browser, page)
    assert loaded["severe"] == [] and loaded["requested"] == [page.resolve().as_uri()], loaded
    cells = _page_cells(browser)
    assert cells == _expected_cells(json.loads(to_json(report))["rows"])
    assert sum(kind == "paper" for *_, kind in cells) == 2 * 2 * 4 * 4  # protocols x blocks x rows x metrics
