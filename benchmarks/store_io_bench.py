"""The render store on object storage (issue 22, design §4.4): rows per second written and read, local disk
against a loopback S3 server, and the HTTP requests that server receives per row.

Run: .venv/bin/python benchmarks/store_io_bench.py [--rows 48] [--sizes 10,100,400]
     .venv/bin/python benchmarks/store_io_bench.py --smoke        # tiny rows, seconds: the smoke test's run
(a few minutes with the defaults; prints markdown tables; writes only to a temporary folder that it removes).

The S3 server is moto's server mode (`python -m moto.server`), started by this script on 127.0.0.1 and
stopped at the end; credentials and endpoint reach botocore through the standard variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), set here for this process and its children only. moto keeps the
objects in memory and answers from one Python process: it stands for the protocol, not for a real service's
latency or bandwidth, so the S3/local ratios are an upper bound of what loopback HTTP costs us.

1. Rows: the synthetic cookie test split (6 samples, real Open3D rendering) is built once by `render build`
   per target and worker count, timed end to end (wall seconds of the CLI process): local disk and s3://,
   1 and 2 workers. The local 1-worker store is the seed of what follows.
2. Rows per second written: --rows identity rows are appended to a fresh store, then 1 or 2 writer processes
   (processes, as the workers of a build) each write their share with `write_sample`, the seed's arrays
   repeated (no rendering is timed). Each process first writes one row untimed (imports, client,
   connections), then all start together; rate = rows / (last end - first start).
   Rows per second read: 1 or 2 reader processes open the store (`open_store`, untimed) and `read_batch` every
   field of their share, --batch rows at a time. The same rows, local and S3, in the same run.
3. Requests per row, counted at the server side: a small HTTP proxy of this script's own sits in front of
   moto and counts every request it forwards, by method (LIST is a GET of the bucket, HEAD bucket a HEAD of
   it). With N rows already written (--sizes; the store made on disk and uploaded object for object, small
   rows of 1 view x 48 px, as the count does not depend on a row's bytes), one process writes --per-row rows
   with `write_sample` (after a first write, counted apart), opens the store and reads the same rows with
   `sample`: requests per row written, per `open_store`, per row read. None of them should grow with N.
The machine may be shared: ratios are only meaningful between numbers of the same run; the 1-minute load
average before and after is printed.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "store-io-bench-key", "AWS_SECRET_ACCESS_KEY": "store-io-bench-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
# variables that would point botocore at the user's own account instead of the loopback server
FOREIGN = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3")
BUCKET = "store-io-bench"
KINDS = ("GET", "PUT", "HEAD", "HEAD bucket", "LIST", "DELETE")
# rows of the request counts: views, image size, points (a build of the cookie split in seconds)
COUNT_ROWS = (1, 48, 48 * 48)
# headers that belong to one hop (RFC 9110 §7.6.1), not forwarded; Expect is answered by the proxy itself
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


# --- the loopback S3 server and the counting proxy in front of it ------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(folder: Path) -> tuple[subprocess.Popen, str]:
    """(process, endpoint) of a moto server on 127.0.0.1, answering; its output goes to folder/moto.log."""
    port = free_port()
    with open(folder / "moto.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=5).close()
            return process, endpoint
        except urllib.error.HTTPError:
            return process, endpoint  # it answers
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise SystemExit(f"moto server did not start: {(folder / 'moto.log').read_text()[-2000:]}") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def request_kind(method: str, target: str) -> str:
    """What an S3 request is, from its method and path-style target: a LIST or HEAD of the bucket, or the
    method on an object."""
    path, _, query = target.partition("?")
    if method == "POST" and query.startswith("delete"):  # DeleteObjects: zarr's delete of a chunk
        return "DELETE"
    if len([part for part in path.split("/") if part]) <= 1:  # /bucket: the bucket itself
        if method == "GET" and (not query or "list-type" in query or "prefix" in query):
            return "LIST"
        return f"{method} bucket"
    return method


class Counts:
    """Requests the proxy forwarded, by kind; `take` returns and resets them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = Counter()

    def add(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def take(self) -> Counter:
        with self._lock:
            taken, self._counts = self._counts, Counter()
            return taken


class Forward(BaseHTTPRequestHandler):
    """Forwards each request to the upstream server as it came (Host header included, so a signature still
    matches) over one kept-alive connection per client connection, and counts it."""

    protocol_version = "HTTP/1.1"  # keep-alive, and a 100 Continue for clients that ask (botocore's PUTs)
    upstream: tuple[str, int]
    counts: Counts

    def log_message(self, *args):  # one line per request on stderr would be most of the output
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _exchange(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
        for attempt in (0, 1):  # the upstream may have closed a kept-alive connection: one fresh try
            connection = getattr(self, "_upstream", None) or http.client.HTTPConnection(*self.upstream, timeout=120)
            self._upstream = connection
            try:
                connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP and name.lower() != "content-length":
                        connection.putheader(name, value)
                if body or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                    connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body)
                response = connection.getresponse()
                return response, response.read()
            except (http.client.HTTPException, OSError):
                connection.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def forward(self):
        body = self._body()
        self.counts.add(request_kind(self.command, self.path))
        response, data = self._exchange(body)
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = forward

    def finish(self):
        super().finish()
        if getattr(self, "_upstream", None):
            self._upstream.close()


def start_proxy(upstream: str) -> tuple[ThreadingHTTPServer, str, Counts]:
    """(server, endpoint, counts) of a counting proxy on 127.0.0.1 in front of `upstream`, serving on threads
    of this process (which only waits while it counts: the measured requests come from child processes)."""
    counts = Counts()
    host, port = upstream.removeprefix("http://").split(":")
    handler = type("CountingForward", (Forward,), {"upstream": (host, int(port)), "counts": counts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", counts


def make_bucket(endpoint: str, name: str) -> None:
    """An empty bucket (an unsigned PUT: moto's server accepts one unless it enforces auth)."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=30).close()


def use_endpoint(endpoint: str, folder: Path) -> None:
    """Point this process (and the children it starts from now on) at `endpoint` with the bench's credentials,
    never the user's ~/.aws files or profile."""
    for name in FOREIGN:
        os.environ.pop(name, None)
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint, AWS_CONFIG_FILE=str(folder / "no-aws-config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(folder / "no-aws-credentials"))


# --- rows -------------------------------------------------------------------------------------------------

def render_options(views: int, image_size: int, max_points: int) -> list[str]:
    return ["--views", str(views), "--image-size", str(image_size), "--supersample", "1", "--max-points",
            str(max_points), "--point-size", "2"]


def timed_build(data: Path, out: str, workers: int, options: list[str], folder: Path) -> float:
    """Wall seconds of one `render build` process of the cookie test split into `out`; exits if it fails."""
    command = [sys.executable, "-m", "pointad.render.cli", "build", "--format", "mvtec3d", "--root", str(data),
               "--classes", "cookie", "--splits", "test", "--out", out, "--workers", str(workers),
               *options]
    log = folder / f"build-{len(list(folder.glob('build-*.log')))}.log"
    started = time.perf_counter()
    with open(log, "wb") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    return seconds


def seed_rows(seed) -> list:
    """The SampleArrays of every row of the seed store, in row order."""
    from pointad.shared.store import SAMPLE_FIELDS, SampleArrays, open_store
    store = open_store(seed)
    rows = []
    for row in store.indices():
        sample = store.sample(int(row))
        rows.append(SampleArrays(**{name: getattr(sample, name) for name in SAMPLE_FIELDS}))
    return rows


def new_store(location, seed, rows: int) -> None:
    """An empty store at `location` with the seed's attributes and `rows` identity rows (copies of the seed's
    identities under new sample ids), none written."""
    from pointad.shared.store import open_store
    from pointad.shared.store_write import append_samples, create_store
    source = open_store(seed)
    create_store(location, source.attrs)
    n = len(source)
    identities = []
    for k in range(rows):
        identity = source.identity(k % n)
        identities.append(identity | {"sample_id": f"{identity['sample_id']}/copy-{k:05d}"})
    append_samples(location, identities)


def stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def remove_store(location) -> None:
    """Remove a store this run made (a folder in its temporary folder, or a key in its own bucket)."""
    from pointad.shared.location import as_location, is_remote
    location = as_location(location)
    if is_remote(location):
        location.fs.rm(location.path, recursive=True)
    else:
        shutil.rmtree(location)


# --- timed writers and readers (child processes) -----------------------------------------------------------

def io_worker(job: dict, barrier, results) -> None:
    """One writer or reader process: an untimed first write (or open), then its rows once every process is
    ready; puts (start, end) on `results` (time.monotonic: one clock for every process), or ("error", text)."""
    try:
        from pointad.shared.store import SAMPLE_FIELDS, open_store
        from pointad.shared.store_write import write_sample
        rows, location = job["rows"], job["store"]
        if job["mode"] == "write":
            arrays = seed_rows(job["seed"])
            write_sample(location, rows[0], arrays[rows[0] % len(arrays)])  # imports, client, connections
            barrier.wait(timeout=600)
            start = time.monotonic()
            for row in rows:
                write_sample(location, row, arrays[row % len(arrays)])
        else:
            store = open_store(location)
            store.read_batch(rows[:1], SAMPLE_FIELDS)
            barrier.wait(timeout=600)
            start = time.monotonic()
            for i in range(0, len(rows), job["batch"]):
                store.read_batch(rows[i:i + job["batch"]], SAMPLE_FIELDS)
        results.put((start, time.monotonic()))
    except BaseException:
        barrier.abort()
        results.put(("error", traceback.format_exc()))


def rows_per_second(mode: str, location, seed, rows: int, processes: int, batch: int) -> float:
    """Rows per second of `processes` writer or reader processes sharing rows 0..rows-1 (contiguous shares)."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, as a build's loky workers
    barrier, results = context.Barrier(processes), context.Queue()
    shares = [list(range(rows))[w * rows // processes:(w + 1) * rows // processes] for w in range(processes)]
    workers = [context.Process(target=io_worker, args=({"mode": mode, "store": str(location), "seed": str(seed),
                                                         "rows": share, "batch": batch}, barrier, results))
               for share in shares]
    for worker in workers:
        worker.start()
    spans = [results.get(timeout=1200) for _ in workers]
    for worker in workers:
        worker.join()
    errors = [span[1] for span in spans if span[0] == "error"]
    if errors:
        raise SystemExit(f"{mode} worker failed:\n{errors[0]}")
    return rows / (max(end for _, end in spans) - min(start for start, _ in spans))


def check_rows(location, seed, rows: int) -> None:
    """Exit unless the first and last row read back from `location` hold the seed's arrays."""
    import numpy as np

    from pointad.shared.store import SAMPLE_FIELDS, open_store
    store, arrays = open_store(location), seed_rows(seed)
    if not store.complete.all():
        raise SystemExit(f"{location}: {int((~store.complete).sum())} rows not complete after the writers")
    for row in (0, rows - 1):
        got, want = store.sample(row), arrays[row % len(arrays)]
        differing = [name for name in SAMPLE_FIELDS if not np.array_equal(getattr(got, name), getattr(want, name))]
        if differing:
            raise SystemExit(f"{location}: row {row} read back differs in {differing}")


# --- requests per row (one child process, phase by phase, through the counting proxy) ---------------------

def counted_worker(job: dict, pipe) -> None:
    """Runs the phases of one count as the parent says go, answering "done" after each: first write, writes,
    open, reads. AWS_ENDPOINT_URL is the counting proxy's (set before any client exists)."""
    try:
        os.environ["AWS_ENDPOINT_URL"] = job["endpoint"]
        from pointad.shared.store import open_store
        from pointad.shared.store_write import write_sample
        arrays, location, rows = seed_rows(job["seed"]), job["store"], job["rows"]
        store = None

        def first_write():
            write_sample(location, rows[0], arrays[rows[0] % len(arrays)])

        def writes():
            for row in rows[1:]:
                write_sample(location, row, arrays[row % len(arrays)])

        def opening():
            nonlocal store
            store = open_store(location)

        def reads():
            for row in rows[1:]:
                store.sample(row)
        for phase in (first_write, writes, opening, reads):
            pipe.recv()
            phase()
            pipe.send("done")
    except BaseException:
        pipe.send(traceback.format_exc())


def count_requests(location: str, seed, n: int, per_row: int, proxy: str, counts: Counts) -> dict:
    """{phase: Counter of requests by kind} of one process writing rows n..n+per_row of a store
    whose first n rows are written (first write, writes, open_store, reads)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    rows = list(range(n, n + 1 + per_row))
    worker = context.Process(target=counted_worker, args=({"endpoint": proxy, "store": location, "seed": str(seed),
                                                           "rows": rows}, child))
    worker.start()
    taken = {}
    try:
        for phase in ("first write", "write", "open", "read"):
            counts.take()  # nothing else talks to the proxy: this drops only requests of no phase
            parent.send("go")
            answer = parent.recv()
            if answer != "done":
                raise SystemExit(f"counting worker failed:\n{answer}")
            taken[phase] = counts.take()
    finally:
        worker.join(timeout=60)
        if worker.is_alive():
            worker.kill()
    return taken


def upload(local: Path, url: str) -> None:
    """Copy the store at `local` to `url` object for object (`render build` into S3 writes the same bytes)."""
    from pointad.shared.remote import filesystem
    target = url.removeprefix("s3://").rstrip("/")
    filesystem(url).pipe({f"{target}/{p.relative_to(local).as_posix()}": p.read_bytes()
                          for p in sorted(local.rglob("*")) if p.is_file()})


def counted_store(folder: Path, url: str, seed, n: int, per_row: int) -> None:
    """A store at `url` with n + 1 + per_row rows, the first n written: made on disk with write_sample and
    uploaded (hundreds of rows through write_sample against moto would take minutes)."""
    from pointad.shared.store_write import write_sample
    local = folder / "counted.zarr"
    new_store(local, seed, n + 1 + per_row)
    arrays = seed_rows(seed)
    for row in range(n):
        write_sample(local, row, arrays[row % len(arrays)])
    upload(local, url)
    shutil.rmtree(local)


def per_row(counter: Counter, rows: int) -> str:
    """'12.0 (GET 10.0, PUT 2.0)': requests per row, then by kind."""
    total = sum(counter.values()) / rows
    kinds = [*KINDS, *sorted(set(counter) - set(KINDS))]
    parts = ", ".join(f"{kind} {counter[kind] / rows:g}" for kind in kinds if counter[kind])
    return f"{total:g} ({parts})" if parts else "0"


# --- the run ---------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48, help="Rows written and read per measurement.")
    parser.add_argument("--batch", type=int, default=8, help="Rows per read_batch call of the readers.")
    parser.add_argument("--sizes", default="10,100,400", help="Rows already in the store when requests are counted.")
    parser.add_argument("--per-row", type=int, default=10, help="Rows written and read per count.")
    parser.add_argument("--views", type=int, default=9)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--max-points", type=int, default=336 * 336)
    parser.add_argument("--build-workers", default="1,2", help="Worker counts of the timed render builds.")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny rows (1 view, 48 px, 2304 points), --rows 4, --sizes 2,6, --per-row 2, "
                             "--build-workers 1.")
    if parser.parse_args().smoke:  # its values become the defaults: an option given still wins
        parser.set_defaults(rows=4, sizes="2,6", per_row=2, views=COUNT_ROWS[0], image_size=COUNT_ROWS[1],
                            max_points=COUNT_ROWS[2], build_workers="1")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    build_workers = sorted({int(w) for w in args.build_workers.split(",")} | {1})  # 1: the seed of what follows
    load_before = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="pointad-store-io-"))
    moto, server = start_moto(folder), None
    try:
        _, endpoint = moto
        use_endpoint(endpoint, folder)
        make_bucket(endpoint, BUCKET)
        from pointad.render import synthetic
        data = synthetic.generate(folder / "synthetic", synthetic.SyntheticSpec(
            classes=("cookie",), train=0, validation=0, test_good=1, per_defect=1))

        builds = {}
        options = render_options(args.views, args.image_size, args.max_points)
        for target in ("local", "s3"):
            for workers in build_workers:
                out = str(folder / f"build-{workers}.zarr") if target == "local" else f"s3://{BUCKET}/build-{workers}.zarr"
                builds[target, workers] = timed_build(data, out, workers, options, folder)
                print(f"render build {target} {workers} worker(s): {builds[target, workers]:.1f} s", file=sys.stderr,
                      flush=True)
        seed = folder / "build-1.zarr"
        from pointad.shared.store import open_store
        samples = len(open_store(seed))
        row_bytes = stored_bytes(seed) / samples

        rates = {}
        for target in ("local", "s3"):
            for processes in (1, 2):
                location = str(folder / "rows.zarr") if target == "local" else f"s3://{BUCKET}/rows-{processes}.zarr"
                new_store(location, seed, args.rows)
                rates["write", target, processes] = rows_per_second("write", location, seed, args.rows, processes,
                                                                    args.batch)
                check_rows(location, seed, args.rows)
                rates["read", target, processes] = rows_per_second("read", location, seed, args.rows, processes,
                                                                   args.batch)
                remove_store(location)
                print(f"{target} {processes} process(es): write {rates['write', target, processes]:.1f} rows/s, read "
                      f"{rates['read', target, processes]:.1f} rows/s", file=sys.stderr, flush=True)

        server, proxy, counts = start_proxy(endpoint)
        # the count does not depend on a row's bytes (one object per array and row): small rows, made fast
        small = folder / "small.zarr"
        if (args.views, args.image_size, args.max_points) == COUNT_ROWS:
            small = seed  # already rows of that size (--smoke)
        else:
            timed_build(data, str(small), max(build_workers), render_options(*COUNT_ROWS), folder)
        counted = {}
        for n in sizes:
            location = f"s3://{BUCKET}/counted-{n}.zarr"
            counted_store(folder, location, small, n, args.per_row)
            counted[n] = count_requests(location, small, n, args.per_row, proxy, counts)
            remove_store(location)
            print(f"N={n}: write_sample {per_row(counted[n]['write'], args.per_row)}, open_store "
                  f"{per_row(counted[n]['open'], 1)}", file=sys.stderr, flush=True)
        load_after = os.getloadavg()[0]
    finally:
        if server is not None:
            server.shutdown()
        stop(moto[0])
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, moto {_version('moto')} on 127.0.0.1 (loopback), "
          f"load average {load_before:.1f} before, {load_after:.1f} after. Rows: {args.views} views x "
          f"{args.image_size} px, {args.max_points} points, {row_bytes / 2**20:.2f} MiB stored per row "
          f"(the cookie test split's {samples} rows, repeated).\n")
    print(f"Rows per second ({args.rows} rows; readers: read_batch of every field, {args.batch} rows a call); "
          "render build: wall seconds of the CLI, 6 samples. S3/local: S3 rate over local rate (build: time over time).\n")
    print("| what | processes | local | S3 (moto) | S3/local |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("write", "read"):
        for processes in (1, 2):
            local, remote = rates[mode, "local", processes], rates[mode, "s3", processes]
            print(f"| {mode} rows/s | {processes} | {local:.1f} | {remote:.1f} | {remote / local:.2f} |")
    for workers in build_workers:
        local, remote = builds["local", workers], builds["s3", workers]
        print(f"| render build s | {workers} | {local:.1f} | {remote:.1f} | {remote / local:.2f} |")

    print(f"\nHTTP requests the S3 server received (counted by a proxy in front of it): one process writes "
          f"{args.per_row} rows with write_sample after a first one (the process's first call), opens the store "
          f"(open_store) and reads the {args.per_row} rows with sample; with N rows already written. Requests per "
          f"row, by method (LIST: a listing of the bucket; HEAD bucket: of the bucket itself). Rows of "
          f"{COUNT_ROWS[0]} view x {COUNT_ROWS[1]} px: the count does not depend on a row's bytes.\n")
    print("| N | first write_sample | write_sample per row | open_store | sample per row |")
    print("|---:|---|---|---|---|")
    for n in sizes:
        phases = counted[n]
        print(f"| {n} | {per_row(phases['first write'], 1)} | {per_row(phases['write'], args.per_row)} "
              f"| {per_row(phases['open'], 1)} | {per_row(phases['read'], args.per_row)} |")


def _version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    main()
