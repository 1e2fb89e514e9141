"""Crafted point-cloud files (issue 21, item 5): a header promising more than its data holds is one line.

A binary_compressed PCD whose POINTS claims 10^6 points over a 200-point payload crashes Open3D's reader
(it trusts the header and reads past its buffer: SIGSEGV, so `render build` died on that sample at every
rerun). Our reader decodes every PCD itself and checks what the header promises against the two size
fields and the file first. The files are read in child processes: a crash shows as a negative return
code there, not as the end of pytest. Each hostile file is first shown to be armed: Open3D does crash on it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from pointad.render.readers.files import read_point_cloud
from pointad.render.readers.lzf import lzf_decompress
from pointad.shared.errors import InputFileError

COUNT = 200
POINTS = np.random.default_rng(21).random((COUNT, 3)).astype(np.float32).astype(np.float64)
DATA_LINE = b"DATA binary_compressed\n"

# each file given is read as `render build` reads it; one line per file: the point count or the error
READ_EACH = """
import sys
from pathlib import Path
from pointad.render.readers.files import read_point_cloud
from pointad.shared.errors import PointADError
for name in sys.argv[1:]:
    try:
        print(len(read_point_cloud(Path(name))))
    except PointADError as exc:
        print(exc)
"""


def _run(code: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)


def _compressed_pcd(folder: Path) -> bytes:
    path = folder / "written.pcd"
    assert o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(POINTS)),
                                    compressed=True)
    return path.read_bytes()


def _parts(data: bytes) -> tuple[bytes, int, int, bytes]:
    """(header up to and including the DATA line, compressed size, uncompressed size, LZF stream)."""
    cut = data.index(DATA_LINE) + len(DATA_LINE)
    compressed, uncompressed = np.frombuffer(data, "<u4", 2, cut)
    return data[:cut], int(compressed), int(uncompressed), data[cut + 8:]


def crafted(data: bytes, *, points=None, width=None, height=None, sizes=None, stream=None) -> bytes:
    """The compressed PCD `data` with header counts, the two size fields or the stream replaced."""
    header, compressed, uncompressed, original = _parts(data)
    for key, value in (("POINTS", points), ("WIDTH", width), ("HEIGHT", height)):
        if value is not None:
            header = re.sub(rb"\n%s \d+\n" % key.encode(), b"\n%s %d\n" % (key.encode(), value), header)
    compressed, uncompressed = sizes if sizes is not None else (compressed, uncompressed)
    return header + np.array([compressed, uncompressed], "<u4").tobytes() + (original if stream is None else stream)


def _cases(data: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, what reading it prints: a point count or the reason after the path)."""
    _, c, u, stream = _parts(data)
    return {
        "pristine": (data, str(COUNT)),
        "claims 10^6 points": (crafted(data, points=10**6, width=10**6),
                               f"declares 1000000 points (12000000 bytes), its compressed data unpacks to {u} bytes"),
        "claims 10^9 points": (crafted(data, points=10**9, width=10**9),
                               f"declares 1000000000 points (12000000000 bytes), its compressed data unpacks to "
                               f"{u} bytes"),
        "claims 3x10^8 points, sizes to match": (
            crafted(data, points=3 * 10**8, width=3 * 10**8, sizes=(c, 36 * 10**8)),
            f"{c} compressed bytes cannot hold the 3600000000 bytes declared"),
        "compressed size too large": (crafted(data, sizes=(c + 1000, u)),
                                      f"declares {COUNT} points in {c + 1000} compressed bytes, the file holds {c}"),
        "payload cut": (data[:-40], f"declares {COUNT} points in {c} compressed bytes, the file holds {c - 40}"),
        "size fields cut": (data[:len(_parts(data)[0]) + 5],
                            "binary_compressed data section ends before its two size fields"),
        "points not width x height": (crafted(data, width=COUNT // 2),
                                      f"PCD header declares POINTS {COUNT} but WIDTH {COUNT // 2} x HEIGHT 1"),
        "stream refers before its start": (crafted(data, stream=b"\x40\x05" + stream[2:]),
                                           "compressed data refers 6 bytes back at output byte 0"),
        "binary PCD claims 10^9 points": (_uncompressed_pcd("binary", 10**9), f"declares 1000000000 points, holds {COUNT}"),
        "ascii PCD claims 10^9 points": (_uncompressed_pcd("ascii", 10**9), f"declares 1000000000 points, holds {COUNT}"),
    }


def _uncompressed_pcd(kind: str, declared: int) -> bytes:
    header = (f"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {declared}\nHEIGHT 1\n"
              f"POINTS {declared}\nDATA {kind}\n").encode()
    if kind == "ascii":
        return header + "".join(f"{x:.9g} {y:.9g} {z:.9g}\n" for x, y, z in POINTS).encode()
    return header + POINTS.astype("<f4").tobytes()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> bytes:
    return _compressed_pcd(tmp_path_factory.mktemp("written"))


def test_the_crafted_file_is_armed_open3d_crashes_on_it(written, tmp_path):
    """Not our code: shows the file is hostile. Open3D reads 1.2 GB past its buffer for it: it crashes, or
    (memory permitting) returns 10^8 points it made up (if it ever refuses the file, the guard is still right)."""
    path = tmp_path / "claims.pcd"
    path.write_bytes(crafted(written, points=10**8, width=10**8))
    result = _run("import sys, open3d; print(len(open3d.io.read_point_cloud(sys.argv[1]).points))", path, cwd=tmp_path)
    assert result.returncode < 0 or result.stdout.split() == [str(10**8)], (result.returncode, result.stdout)


def test_crafted_files_are_refused_in_one_line_and_never_crash(written, tmp_path):
    cases = _cases(written)
    paths = []
    for number, (data, _) in enumerate(cases.values()):
        paths.append(tmp_path / f"case{number}.pcd")
        paths[-1].write_bytes(data)
    result = _run(READ_EACH, *paths, cwd=tmp_path)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    expected = [reason if reason.isdigit() else f"{path}: {reason}" for path, (_, reason) in zip(paths, cases.values())]
    assert result.stdout.splitlines() == expected


def test_a_cut_compressed_size_is_refused(written, tmp_path):
    """A compressed size short of the stream cuts it at some token, or is too short to hold the data at all:
    whichever, the answer is one line."""
    _, c, u, _ = _parts(written)
    path = tmp_path / "short.pcd"
    for short in (1, 2, 3, 17, c // 2, c - 1):
        path.write_bytes(crafted(written, sizes=(c - short, u)))
        with pytest.raises(InputFileError) as info:
            read_point_cloud(path)
        assert re.fullmatch(rf"{path}: (compressed data (cut inside a (literal run|back-reference)|decompresses to "
                            rf"\d+ bytes, not the {u} declared)|{c - short} compressed bytes cannot hold the {u} "
                            r"bytes declared)", str(info.value)), str(info.value)


def test_render_scan_reports_the_crafted_sample_and_goes_on(written, tmp_path):
    """`pointad render scan` on a Real3D-AD layout whose test cloud is crafted: exit 1, the file named once."""
    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / "thing" / split).mkdir(parents=True)
    (root / "thing" / "train" / "1_template.pcd").write_bytes(written)
    bad = root / "thing" / "test" / "2_good.pcd"
    bad.write_bytes(crafted(written, points=10**6, width=10**6))
    result = _run("from pointad.shared.cli import main; main()", "render", "scan", "--format", "real3d", "--root",
                  root, cwd=tmp_path)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    _, _, u, _ = _parts(written)
    assert [line for line in result.stderr.splitlines() if line.startswith("failed: ")] == [
        f"failed: {bad}: declares 1000000 points (12000000 bytes), its compressed data unpacks to {u} bytes"]
    assert re.search(r"thing\s+train\s+1\s", result.stdout), result.stdout


# --- the LZF decoder ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream, expected", [
    (b"\x02abc", b"abc"),                          # one literal run of 3
    (b"\x01ab\x40\x01", b"ababab"),                # a back-reference of 4 bytes from 2 back: overlaps itself
    (b"\x03abcd\x20\x03", b"abcdabc"),             # 3 bytes from 4 back
    (b"\x00a\xe0\x0b\x00", b"a" * 21),             # a long back-reference: 7 + 11 + 2 = 20 bytes from 1 back
    (b"", b""),
])
def test_lzf_hand_made_streams(stream, expected):
    assert lzf_decompress(stream, len(expected)) == expected


@pytest.mark.parametrize("stream, size, reason", [
    (b"\x05ab", 6, "compressed data cut inside a literal run"),
    (b"\x00a\xe0", 21, "compressed data cut inside a back-reference"),
    (b"\x00a\x40", 5, "compressed data cut inside a back-reference"),
    (b"\x00a\x40\x05", 5, "compressed data refers 6 bytes back at output byte 1"),
    (b"\x02abc", 2, "compressed data decompresses to more than the 2 bytes declared"),
    (b"\x02abc", 4, "compressed data decompresses to 3 bytes, not the 4 declared"),
])
def test_lzf_damaged_streams_are_value_errors(stream, size, reason):
    with pytest.raises(ValueError) as info:
        lzf_decompress(stream, size)
    assert str(info.value) == reason


@pytest.mark.parametrize("kind", ["random", "repetitive", "with normals and colours"])
def test_compressed_pcd_reads_as_open3d_reads_it(tmp_path, kind):
    """On files Open3D writes, our decoder is the twin of Open3D's reader (repetitive data: long and
    overlapping back-references)."""
    rng = np.random.default_rng(4)
    points = rng.random((5000, 3)) if kind != "repetitive" else np.column_stack(
        [np.arange(5000) % 7, np.zeros(5000), np.repeat(np.arange(50), 100)]).astype(np.float64)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    if kind == "with normals and colours":
        cloud.colors = o3d.utility.Vector3dVector(rng.random((5000, 3)))
        cloud.normals = o3d.utility.Vector3dVector(rng.random((5000, 3)))
    path = tmp_path / "cloud.pcd"
    assert o3d.io.write_point_cloud(str(path), cloud, compressed=True)
    ours, theirs = read_point_cloud(path), np.asarray(o3d.io.read_point_cloud(str(path)).points)
    assert ours.shape == theirs.shape == (5000, 3)
    assert np.array_equal(ours, theirs), np.abs(ours - theirs).max()
    if kind == "repetitive":
        assert len(path.read_bytes()) < 0.5 * 5000 * 12  # it did compress: back-references were decoded


# --- clouds with repeated points under --downsample (issue 21, item 7) --------------------------------------

def _distinct(points) -> int:
    return len(np.unique(np.asarray(points), axis=0))


@pytest.mark.parametrize("fmt", ["mvtec3d", "real3d"])
def test_a_downsampled_build_of_repeated_points_passes_verify(fmt, tmp_path):
    """A 48-pixel scan resized to 96 repeats each measured point about 4 times; the Real3D-AD cloud holds 150
    points 4 times each. --downsample 0.9 asks for more points than are distinct: the build keeps each
    distinct point once (grid cells unique) and `render verify` accepts the store it wrote."""
    from pointad.render import synthetic
    from pointad.render.build import build_store
    from pointad.render.datasets import open_dataset
    from pointad.render.options import RenderOptions
    from pointad.render.readers import list_samples, preprocess_options, read_sample
    from pointad.render.verify import verify_store
    from pointad.shared.store import open_store
    if fmt == "mvtec3d":
        spec = synthetic.SyntheticSpec(format="mvtec3d", seed=5, classes=("cookie",), defects=("bump",), train=0,
                                       validation=0, test_good=1, per_defect=0, grid=48)
        entry = open_dataset(format="mvtec3d", root=synthetic.generate(tmp_path / "data", spec))
    else:
        (tmp_path / "data" / "thing" / "test").mkdir(parents=True)
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.tile(POINTS[:150], (4, 1))))
        assert o3d.io.write_point_cloud(str(tmp_path / "data" / "thing" / "test" / "1_good.pcd"), cloud)
        entry = open_dataset(format="real3d", root=tmp_path / "data")
    store_path = tmp_path / "renders.zarr"
    result = build_store(entry, store_path, RenderOptions(views=3, image_size=96, supersample=1, max_points=96 * 96,
                                                          point_size=2, downsample=0.9, renderer="splat"))
    assert result.rendered == 1 and not result.failures
    ref = list_samples(entry)[0]
    read = read_sample(entry, ref, preprocess_options(entry, ref.class_name, image_size=96, max_points=96 * 96))
    requested, distinct = round(read.n_points * 0.9), _distinct(read.points)
    assert distinct < requested and (fmt == "mvtec3d" or distinct == 150)
    store = open_store(store_path)
    row = store.sample(0)
    n = int(row.n_points)
    assert n == distinct and _distinct(row.xyz[:n]) == n  # min(requested, distinct) points, none twice
    if fmt == "mvtec3d":
        assert len(np.unique(row.grid_index[:n])) == n
    assert verify_store(store) == []


# --- PLY files with list properties before or in the vertex element ------------------------------------------

def _list_ply(encoding: str, declared: int | None = None, rows: int = COUNT) -> bytes:
    """A PLY whose faces come first and whose vertices carry a list (`idx`) between y and z: records of
    varying length. Face i lists i % 4 vertex indices; vertex i lists i % 3 values."""
    faces, vertices = 5, POINTS[:rows]
    header = (f"ply\nformat {encoding} 1.0\nelement face {faces}\nproperty list uchar int vertex_indices\n"
              f"element vertex {rows if declared is None else declared}\nproperty float x\nproperty float y\n"
              "property list uchar short idx\nproperty float z\nproperty uchar q\nend_header\n").encode()
    if encoding == "ascii":
        face_rows = [" ".join(map(str, [i % 4] + list(range(i % 4)))) for i in range(faces)]
        vertex_rows = [" ".join([f"{x:.9g}", f"{y:.9g}", str(i % 3), *map(str, range(i % 3)), f"{z:.9g}", "7"])
                       for i, (x, y, z) in enumerate(vertices)]
        return header + ("\n".join(face_rows + vertex_rows) + "\n").encode()
    order = "<" if encoding == "binary_little_endian" else ">"
    body = b"".join(np.array([i % 4], "u1").tobytes() + np.arange(i % 4, dtype=order + "i4").tobytes()
                    for i in range(faces))
    for i, (x, y, z) in enumerate(vertices):
        body += (np.array([x, y], order + "f4").tobytes() + np.array([i % 3], "u1").tobytes()
                 + np.arange(i % 3, dtype=order + "i2").tobytes() + np.array([z], order + "f4").tobytes() + b"\x07")
    return header + body


ENCODINGS = ["ascii", "binary_little_endian", "binary_big_endian"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_list_property_ply_reads_as_open3d_reads_it(tmp_path, encoding):
    path = tmp_path / "lists.ply"
    path.write_bytes(_list_ply(encoding))
    ours = read_point_cloud(path)
    theirs = np.asarray(o3d.io.read_point_cloud(str(path)).points)
    assert ours.shape == theirs.shape == (COUNT, 3)
    assert np.abs(ours - theirs).max() <= 1e-7 and np.abs(ours - POINTS).max() <= 1e-7


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_list_property_ply_promising_more_vertices_is_refused(tmp_path, encoding):
    """Open3D allocates the declared 10^9 vertices for such a file (24 GB: killed, or std::bad_alloc) and
    returns a cut one's missing vertices as zeros; here both are one line, without the allocation."""
    path = tmp_path / "lists.ply"
    smallest = 4 + 4 + 1 + 4 + 1  # bytes of a vertex record whose list is empty
    cases = [(10**9, f"declares 1000000000 points, holds {COUNT}") if encoding == "ascii" else
             (10**9, f"declares 1000000000 points, its {len(_list_ply(encoding)) - _data_start(encoding)} data bytes "
                     f"hold at most {(len(_list_ply(encoding)) - _data_start(encoding)) // smallest}"),
             (COUNT + 10, f"declares {COUNT + 10} points, holds {COUNT}")]
    for declared, reason in cases:
        path.write_bytes(_list_ply(encoding, declared=declared))
        with pytest.raises(InputFileError) as info:
            read_point_cloud(path)
        assert str(info.value) == f"{path}: {reason}"


def _data_start(encoding: str) -> int:
    """Where the vertex records start in `_list_ply(encoding)` (after the header and the five faces)."""
    whole = _list_ply(encoding)
    return whole.index(b"end_header\n") + len(b"end_header\n") + sum(1 + 4 * (i % 4) for i in range(5))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_cut_list_property_ply_is_refused(tmp_path, encoding):
    """Cut inside the last vertex: one line saying how many whole vertices it holds."""
    path = tmp_path / "lists.ply"
    whole = _list_ply(encoding)
    path.write_bytes(whole[:-3])
    with pytest.raises(InputFileError) as info:
        read_point_cloud(path)
    last_line = whole.count(b"\n")
    expected = (f"{path}: line {last_line}: malformed row (5 values, its properties take 6)"
                if encoding == "ascii" else f"{path}: declares {COUNT} points, holds {COUNT - 1}")
    assert str(info.value) == expected
