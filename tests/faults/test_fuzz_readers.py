"""Fuzzing every reader (issue 9): damaged files give our one-line error or a valid sample, nothing else.

Each case takes a valid file (written by the synthetic generators, or by hand for the layouts they do not
write), applies hypothesis-drawn damage (a cut at any length, byte overwrites, insertions, deletions; edits
drawn near the start half the time, where the headers are) and reads it the way `render build` or
`detect` does. Allowed outcomes: a `PointADError` whose message is one line starting with the file's path,
or a sample that satisfies the `Sample` contract (finite float32 points, labels in {0, 1}, consistent
shapes). Derandomized and bounded, so CI sees the same examples every run.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointad.render import synthetic
from pointad.render.datasets import open_dataset
from pointad.render.readers import list_samples, read_sample
from pointad.shared.errors import PointADError

GRID = 64  # small synthetic scans: each read is a few milliseconds
FEW = dict(classes=("cookie",), defects=("bump",), train=0, validation=0, test_good=1, per_defect=1, grid=GRID)
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@st.composite
def edits(draw, size: int) -> tuple:
    """Damage for a file of `size` bytes: ("cut", n), or 1 to 3 (kind, offset, bytes) edits; offsets are
    drawn near the start (the header) half the time. Drawn as edits, not bytes, so a failure prints short."""
    near_start = st.integers(0, min(size, 600))
    anywhere = st.integers(0, size)
    if draw(st.booleans()):
        return (("cut", draw(st.one_of(near_start, anywhere)), b""),)
    return tuple((draw(st.sampled_from(["overwrite", "insert", "delete"])), draw(st.one_of(near_start, anywhere)),
                  draw(st.binary(min_size=1, max_size=8))) for _ in range(draw(st.integers(1, 3))))


def apply(data: bytes, damage: tuple) -> bytes:
    for kind, at, chunk in damage:
        if kind == "cut":
            data = data[:at]
        elif kind == "overwrite":
            data = data[:at] + chunk + data[at + len(chunk):]
        elif kind == "insert":
            data = data[:at] + chunk + data[at:]
        else:
            data = data[:at] + data[at + len(chunk):]
    return data


def check_sample(sample) -> None:
    """The `Sample` contract (design §2) on whatever a damaged file still yielded."""
    p = sample.n_points
    assert p > 0 and sample.points.dtype == np.float32 and sample.points.shape == (p, 3)
    assert np.isfinite(sample.points).all()
    assert sample.point_labels.dtype == np.uint8 and sample.point_labels.shape == (p,)
    assert set(np.unique(sample.point_labels)) <= {0, 1}
    if sample.grid_index is not None:
        h, w = sample.grid_hw
        assert sample.grid_index.min() >= 0 and sample.grid_index.max() < h * w
        assert len(np.unique(sample.grid_index)) == p
    if sample.grid_mask is not None:
        assert sample.grid_mask.shape == sample.grid_hw and set(np.unique(sample.grid_mask)) <= {0, 1}
        if sample.grid_index is not None:
            assert np.array_equal(sample.grid_mask.reshape(-1)[sample.grid_index], sample.point_labels)


def expect_error_or(path: Path, read, check) -> None:
    """read() either raises our error naming `path` on one line, or returns something `check` accepts."""
    try:
        result = read()
    except PointADError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return
    check(result)


def _generated(tmp_path_factory, fmt):
    root = synthetic.generate(tmp_path_factory.mktemp("fuzz") / fmt, synthetic.SyntheticSpec(format=fmt, seed=5, **FEW))
    entry = open_dataset(format=fmt, root=root)
    return entry, list_samples(entry)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return {fmt: _generated(tmp_path_factory, fmt) for fmt in ("mvtec3d", "eyecandies", "real3d")}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("damaged")


def _fuzz_sample_file(datasets, scratch, fmt, role):
    """Damage one file of the anomalous sample of `fmt` (a copy, in `scratch`) and read the sample."""
    entry, refs = datasets[fmt]
    ref = next(r for r in refs if r.label)
    original = Path(ref.files[role])
    copy = scratch / f"{fmt}-{role}{original.suffix}"
    broken = replace(ref, files={**ref.files, role: copy})

    pristine = original.read_bytes()

    @SETTINGS
    @given(damage=edits(len(pristine)))
    def run(damage):
        copy.write_bytes(apply(pristine, damage))
        expect_error_or(copy, lambda: read_sample(entry, broken), check_sample)

    run()


@pytest.mark.parametrize("fmt, role", [
    ("mvtec3d", "xyz"), ("mvtec3d", "rgb"), ("mvtec3d", "gt"),
    ("eyecandies", "depth"), ("eyecandies", "info_depth"), ("eyecandies", "rgb"), ("eyecandies", "gt"),
    ("real3d", "cloud"), ("real3d", "gt"),
])
def test_damaged_dataset_file(datasets, scratch, fmt, role):
    _fuzz_sample_file(datasets, scratch, fmt, role)


def test_damaged_raw_eyecandies_mask_at_listing(datasets, scratch):
    """Listing reads raw test masks to label samples; a damaged mask must not break the listing."""
    entry, refs = datasets["eyecandies"]
    ref = next(r for r in refs if r.label)
    mask = Path(ref.files["gt"])
    pristine = mask.read_bytes()
    root_copy = scratch / "eyecandies-listing"
    shutil.copytree(entry.root, root_copy)
    local = open_dataset(format="eyecandies", root=root_copy)
    target = root_copy / mask.relative_to(entry.root)

    @SETTINGS
    @given(damage=edits(len(pristine)))
    def run(damage):
        target.write_bytes(apply(pristine, damage))
        listed = list_samples(local)
        assert [r.sample_id for r in listed] == [r.sample_id for r in refs]
        again = next(r for r in listed if r.sample_id == ref.sample_id)
        expect_error_or(target, lambda: read_sample(local, again), check_sample)

    run()


# --- detect's loader: every suffix it takes -----------------------------------------------------------------

def _detect_sources(datasets, folder: Path) -> dict[str, Path]:
    """One valid file per layout detect reads, from the synthetic Real3D cloud and MVTec scan."""
    from pointad.render.readers.files import read_point_cloud
    _, refs = datasets["real3d"]
    points = read_point_cloud(refs[0].files["cloud"])
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    sources = {}
    for name, kwargs in (("binary.ply", {}), ("ascii.ply", {"write_ascii": True}),
                         ("binary.pcd", {}), ("ascii.pcd", {"write_ascii": True}),
                         ("compressed.pcd", {"compressed": True})):
        sources[name] = folder / name
        assert o3d.io.write_point_cloud(str(sources[name]), cloud, **kwargs)
    sources["lists.ply"] = folder / "lists.ply"
    sources["lists.ply"].write_bytes(_list_ply(points))
    sources["text.xyz"] = folder / "text.xyz"
    np.savetxt(sources["text.xyz"], points, fmt="%.7g")
    sources["array.npy"] = folder / "array.npy"
    np.save(sources["array.npy"], points.astype(np.float32))
    _, mvtec_refs = datasets["mvtec3d"]
    sources["scan.tiff"] = folder / "scan.tiff"
    shutil.copy(mvtec_refs[0].files["xyz"], sources["scan.tiff"])
    return sources


def _list_ply(points: np.ndarray) -> bytes:
    """A binary PLY the synthetic generators do not write: two faces first, then vertices whose records carry
    a list between y and z (vertex i lists i % 3 shorts), so records vary in length."""
    header = (f"ply\nformat binary_little_endian 1.0\nelement face 2\nproperty list uchar int vertex_indices\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty list uchar short idx\n"
              "property float z\nend_header\n").encode()
    body = b"\x03" + np.arange(3, dtype="<i4").tobytes() + b"\x01" + np.zeros(1, "<i4").tobytes()
    for i, (x, y, z) in enumerate(points.astype("<f4")):
        body += (np.array([x, y], "<f4").tobytes() + bytes([i % 3]) + np.arange(i % 3, dtype="<i2").tobytes()
                 + np.array([z], "<f4").tobytes())
    return header + body


def _check_loaded(result) -> None:
    points, sample, _ = result
    assert points.ndim == 2 and points.shape[1] == 3 and len(points) > 0 and np.isfinite(points).all()
    check_sample(sample)


@pytest.mark.parametrize("name", ["binary.ply", "ascii.ply", "lists.ply", "binary.pcd", "ascii.pcd", "compressed.pcd",
                                  "text.xyz", "array.npy", "scan.tiff"])
def test_damaged_cloud_given_to_detect(datasets, scratch, name):
    from pointad.eval.detect import load_cloud
    folder = scratch / "detect-sources"
    folder.mkdir(exist_ok=True)
    source = _detect_sources(datasets, folder)[name]
    copy = scratch / f"detect-{name}"

    pristine = source.read_bytes()

    @SETTINGS
    @given(damage=edits(len(pristine)))
    def run(damage):
        copy.write_bytes(apply(pristine, damage))
        expect_error_or(copy, lambda: load_cloud(copy, image_size=64), _check_loaded)

    run()


# --- binary_compressed PCD headers (issue 21): counts and size fields drawn, not bytes -------------------------

def _compressed_source(datasets, folder: Path) -> tuple[bytes, int, int, int]:
    """(an Open3D-written compressed PCD, its point count, compressed size, uncompressed size)."""
    path = _detect_sources(datasets, folder)["compressed.pcd"]
    data = path.read_bytes()
    at = data.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n")
    compressed, uncompressed = (int(v) for v in np.frombuffer(data, "<u4", 2, at))
    return data, uncompressed // 12, compressed, uncompressed


def _near(true: int) -> st.SearchStrategy:
    """The true value half the time, else one near it, a hostile one or anything a uint32 holds."""
    return st.one_of(st.just(true), st.sampled_from([0, 1, true - 1, true + 1, 2 * true, 10**6, 10**9, 2**32 - 1]),
                     st.integers(0, 2**32 - 1))


@st.composite
def compressed_headers(draw, points: int, compressed: int, uncompressed: int) -> dict:
    declared = draw(_near(points))
    width = draw(st.one_of(st.just(declared), _near(points)))
    return dict(points=declared, width=width, height=draw(st.sampled_from([1, 1, 2, 0])),
                sizes=(draw(_near(compressed)), draw(_near(uncompressed))),
                cut=draw(st.one_of(st.just(0), st.integers(1, 64))))


def _with_header(data: bytes, points, width, height, sizes, cut) -> bytes:
    import re
    at = data.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n")
    header = data[:at]
    for key, value in ((b"POINTS", points), (b"WIDTH", width), (b"HEIGHT", height)):
        header = re.sub(rb"\n" + key + rb" \d+\n", b"\n%s %d\n" % (key, value), header)
    body = np.array(sizes, "<u4").tobytes() + data[at + 8:]
    return header + (body[:-cut] if cut else body)


def test_compressed_pcd_headers_promising_what_the_data_lacks(datasets, scratch):
    """A crafted header or size field is our one-line error (never a crash: these reach no native reader),
    and only the untouched counts read, as the very points written."""
    from pointad.eval.detect import load_cloud
    from pointad.render.readers.files import read_point_cloud
    folder = scratch / "compressed-headers"
    folder.mkdir(exist_ok=True)
    pristine, points, compressed, uncompressed = _compressed_source(datasets, folder)
    written = read_point_cloud(folder / "compressed.pcd")
    copy = scratch / "crafted.pcd"

    @SETTINGS
    @given(header=compressed_headers(points, compressed, uncompressed))
    def run(header):
        copy.write_bytes(_with_header(pristine, **header))
        untouched = (header["points"] == points == header["width"] * header["height"] and header["cut"] == 0
                     and header["sizes"] == (compressed, uncompressed))
        try:
            read = read_point_cloud(copy)
        except PointADError as exc:
            assert str(exc).startswith(f"{copy}: ") and "\n" not in str(exc) and not untouched, str(exc)
        else:
            assert untouched and np.array_equal(read, written)
        expect_error_or(copy, lambda: load_cloud(copy, image_size=64), _check_loaded)

    run()
