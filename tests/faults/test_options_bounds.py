"""Sizes bounded, numbers finite (issue 21): every number that enters from an option or a config file is
checked against the range declared on its dataclass field (shared/limits.py), and non-finite values never
reach a checkpoint, a metric or a JSON file. Through the real command line (click's CliRunner on `pointad`):
exit code, one `Error:` line naming the option or the file, nothing written."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointad.eval.options import MutualOptions, ReportConfig
from pointad.render.options import RenderOptions
from pointad.shared import strict
from pointad.shared.cli import pointad
from pointad.shared.errors import ConfigError
from pointad.shared.limits import KEY, OutOfRange, Range, bound
from pointad.train.model.model_config import ModelConfig, load_model_config
from pointad.train.options import TrainConfig

TRAIN = ["train", "run", "--store", "absent.zarr", "--model", "tiny", "--dataset", "d", "--class", "c",
         "--device", "cpu"]


def _invoke(args, **kwargs):
    return CliRunner().invoke(pointad, [str(a) for a in args], **kwargs)


def _one_error(result, *fragments, code: int = 1) -> str:
    """The single `Error:` line of a failed command (progress bars aside), checked to hold every fragment."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in re.split(r"[\r\n]", result.output) if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty current folder: what a refused command must leave empty (no runs/, no store, no scores)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- the mechanism --------------------------------------------------------------------------------------------

def _base(cls):
    """A valid instance of each config class with declared ranges."""
    return {TrainConfig: lambda: TrainConfig(store="s", class_name="c"),
            RenderOptions: RenderOptions,
            MutualOptions: MutualOptions,
            ReportConfig: lambda: ReportConfig(store="s", dataset="d", checkpoints=("r",)),
            ModelConfig: lambda: load_model_config("tiny")}[cls]()


def _outside(rng: Range, kind) -> list:
    """Values just outside `rng` (each side that has a bound), and NaN and inf for a float."""
    step = 1 if kind is int else 1e-6
    values = []
    if rng.lo is not None:
        values.append(rng.lo if rng.lo_open else rng.lo - step)
    if rng.hi is not None:
        values.append(rng.hi if rng.hi_open else rng.hi + step)
    return values + ([math.nan, math.inf, -math.inf] if kind is float else [])


RANGED = [(cls, f.name) for cls in (TrainConfig, RenderOptions, MutualOptions, ReportConfig, ModelConfig)
          for f in dataclasses.fields(cls) if KEY in f.metadata]


def test_the_classes_declare_the_ranges_the_issue_names():
    declared = {(cls.__name__, name) for cls, name in RANGED}
    assert {("TrainConfig", n) for n in ("epochs", "batch_size", "lr", "seed", "cache_memory", "layers")} <= declared
    assert {("RenderOptions", n) for n in ("views", "image_size", "supersample", "max_points", "knn")} <= declared
    assert {("ReportConfig", "batch_size"), ("ModelConfig", "image_size"), ("ModelConfig", "tap_layers")} <= declared
    assert bound(TrainConfig, "seed")[1] == Range(0, 2**32 - 1)  # numpy's legacy seeding; torch's 64 bits hold it


@pytest.mark.parametrize("cls, name", RANGED, ids=lambda x: getattr(x, "__name__", x))
def test_every_declared_field_is_checked_on_both_sides(cls, name):
    kind, rng = bound(cls, name)
    base = _base(cls)
    many = "tuple" in str(next(f.type for f in dataclasses.fields(cls) if f.name == name))
    for value in _outside(rng, kind):
        with pytest.raises(ConfigError) as caught:
            dataclasses.replace(base, **{name: (value,) if many else value})
        if not (cls is ModelConfig and value == 0):  # block numbers below 1 have a message of their own
            assert isinstance(caught.value, OutOfRange) and caught.value.key == name, caught.value
            assert str(caught.value).startswith(f"model config 'tiny': '{name}' must" if cls is ModelConfig
                                                else f"{rng.option or '--' + name.replace('_', '-')} must")
    inside = [v for v in (rng.lo, rng.hi) if v is not None and not (rng.lo_open and v == rng.lo)
              and not (rng.hi_open and v == rng.hi)]
    if inside and cls is not ModelConfig:  # a bound itself is accepted
        dataclasses.replace(base, **{name: (inside[0],) if many else inside[0]})


def test_every_float_field_refuses_nan_even_without_a_declared_range():
    with pytest.raises(OutOfRange, match=r"^--angle-shift must be a finite number, got nan$"):
        RenderOptions(angle_shift=math.nan)
    with pytest.raises(OutOfRange, match=r"^--betas must each be a finite number, got inf$"):
        TrainConfig(store="s", class_name="c", betas=(0.5, math.inf))
    with pytest.raises(OutOfRange, match=r"^--point-size must be in \(0, 100\], got 1000"):
        RenderOptions(point_size=10**400)  # an int too large for a float is out of range, not an OverflowError


def test_from_dict_refuses_out_of_range_values_naming_the_source_and_the_key():
    data = load_model_config("tiny").to_dict()
    with pytest.raises(ConfigError, match=r"^ck\.pt: 'image_size' must be in 32\.\.2048, got 1000000000$"):
        ModelConfig.from_dict({**data, "image_size": 10**9}, source="ck.pt")
    # a checkpoint claiming a model too large to allocate is refused before anything is built
    wide = json.loads(json.dumps(data))
    wide["open_clip_config"]["vision_cfg"]["width"] = 10**9
    with pytest.raises(ConfigError, match=r"^ck\.pt: 'open_clip_config\.vision_cfg\.width' must be in 1\.\.8192"):
        ModelConfig.from_dict(wide, source="ck.pt")
    deep = json.loads(json.dumps(data))
    deep["open_clip_config"]["text_cfg"].update(width=8192, layers=200)
    with pytest.raises(ConfigError, match=r"^ck\.pt: 'open_clip_config' describes ~1\.6.e\+11 parameters"):
        ModelConfig.from_dict(deep, source="ck.pt")
    # nested records name the key path; JSON's 1e400 is inf, a 400-digit integer overflows a float
    report = {"store": "s", "dataset": "d", "checkpoints": ["r"]}
    with pytest.raises(ConfigError, match=r"^r\.json: 'mutual\.fraction' must be in \(0, 1\], got 2\.0$"):
        strict.from_dict(ReportConfig, {**report, "mutual": {"fraction": 2.0}}, "r.json")
    with pytest.raises(ConfigError, match=r"^r\.json: 'batch_size' must be in 1\.\.4096, got 0$"):
        strict.from_dict(ReportConfig, {**report, "batch_size": 0}, "r.json")
    with pytest.raises(ConfigError, match=r"^r\.json: 'mutual\.fraction' must be a finite number, got inf$"):
        strict.from_dict(ReportConfig, {**report, "mutual": json.loads('{"fraction": 1e400}')}, "r.json")
    with pytest.raises(ConfigError, match=r"^r\.json: 'mutual\.fraction' must be a finite number, got 1000"):
        strict.from_dict(ReportConfig, {**report, "mutual": {"fraction": 10**400}}, "r.json")
    with pytest.raises(ConfigError, match=r"^render: 'views' must be in 1\.\.64, got 1000$"):
        strict.from_dict(RenderOptions, {"views": 1000}, "render")


def test_a_dual_path_start_beyond_the_model_is_refused_not_silently_off():
    from pointad.train.model.model_config import model_config_for
    assert model_config_for("tiny", dpam_start=4).dual_path_blocks == (4,)
    assert model_config_for("tiny", dpam_start=0).dual_path_blocks == ()
    with pytest.raises(ConfigError, match=r"^--dpam-start 5: model 'tiny' has blocks 1\.\.4; 0 turns the dual path off$"):
        model_config_for("tiny", dpam_start=5)


def test_repeated_classes_and_seeds_are_one_run_each(tmp_path):
    """`--seeds 1,1` would train one folder twice (the second refused after the first) and count it twice in a
    report's mean and std."""
    from pointad.train.sweep import plan_sweep
    runs = plan_sweep(TrainConfig(store="s", class_name="", dataset="d"), ["a", "a", "b"], [1, 1, 2], tmp_path)
    assert [(r.config.class_name, r.config.seed) for r in runs] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]


# -- options refused before any work ------------------------------------------------------------------------

REFUSED = [
    ([*TRAIN, "--lr", "inf"], "--lr must be a finite number, got inf"),
    ([*TRAIN, "--lr", "nan"], "--lr must be a finite number, got nan"),
    ([*TRAIN, "--lr", "1e30"], "--lr must be in (0, 10], got 1e+30"),
    ([*TRAIN, "--batch-size", "0"], "--batch-size must be in 1..4096, got 0"),
    ([*TRAIN, "--epochs", "0"], "--epochs must be in 1..100000, got 0"),
    ([*TRAIN, "--seed", str(2**64)], f"--seed must be in 0..4294967295, got {2**64}"),
    ([*TRAIN, "--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    ([*TRAIN, "--loader-workers", "-1"], "--loader-workers must be in 0..256, got -1"),
    ([*TRAIN, "--layers", "2,300"], "--layers must be in 1..256, got 300"),
    ([*TRAIN, "--device", "foo"], "--device 'foo': not a device; use auto, cpu, cuda, cuda:N or mps"),
    (["train", "sweep", "--store", "s", "--dataset", "d", "--seeds", f"1,{2**70}"], "--seeds must be in 0..4294967295"),
    (["render", "build", "--max-points", "0"], "--max-points must be in 1..4194304, got 0"),
    (["render", "build", "--knn", "100000"], "--knn must be in 1..64, got 100000"),
    (["render", "build", "--views", "1000"], "--views must be in 1..64, got 1000"),
    (["render", "build", "-j", "0"], "--workers must be in 1..256, got 0"),
    (["detect", "cloud.ply", "--checkpoint", "run", "--supersample", "64"], "--supersample must be in 1..8, got 64"),
    (["detect", "cloud.ply", "--checkpoint", "run", "--views", "1000"], "--views must be in 1..64, got 1000"),
    (["detect", "cloud.ply", "--checkpoint", "run", "--threshold", "nan"], "--threshold must be a finite number"),
    (["eval", "report", "--batch-size", "-2"], "--batch-size must be in 1..4096, got -2"),
    (["eval", "report", "--batch-size", "0"], "--batch-size must be in 1..4096, got 0"),
    (["eval", "report", "--mutual-fraction", "nan"], "--mutual-fraction must be a finite number, got nan"),
]


@pytest.mark.parametrize("args, message", REFUSED, ids=[" ".join(a[1:]) for a, _ in REFUSED])
def test_out_of_range_options_are_one_line_and_write_nothing(here, args, message):
    _one_error(_invoke(args), message)
    assert list(here.iterdir()) == []


def test_help_states_the_ranges():
    text = _invoke(["train", "run", "--help"]).output
    assert "1<=x<=4096" in text and "0<x<=10" in text and "0<=x<=4294967295" in text
    assert "1<=x<=64" in _invoke(["render", "build", "--help"]).output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_one_line(here):
    _one_error(_invoke([*TRAIN[:-1], "cuda"]), "--device cuda: no CUDA GPU is available here")
    _one_error(_invoke(["eval", "report", "--device", "cuda:1", "--method", "clip-rendering", "--model", "tiny"]),
               "--device cuda:1: no CUDA GPU")
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK is not; launch with torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "torchrun's variables must be whole numbers"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5, LOCAL_RANK=5 do not fit WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 is set but MASTER_ADDR and MASTER_PORT are not"),
])
def test_a_partial_torchrun_environment_is_one_line(here, monkeypatch, env, message):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _one_error(_invoke([*TRAIN, "--out", "run"]), message)
    assert list(here.iterdir()) == []


def test_out_dot_in_a_folder_of_the_users_files_is_refused(here):
    (here / "notes.txt").write_text("mine")
    _one_error(_invoke([*TRAIN, "--out", "."]), ".: holds files that are not a training run's (notes.txt)")
    assert sorted(p.name for p in here.iterdir()) == ["notes.txt"] and (here / "notes.txt").read_text() == "mine"


def test_default_run_folder_of_a_hostile_dataset_name_stays_in_runs(here, monkeypatch):
    """The store names the dataset; '../../x' or '/abs/x' must not put the run folder anywhere but runs/."""
    seen = []

    def fake_train(config, out, **kwargs):  # the command's path as the training loop would get it
        seen.append(Path(out))
        raise ConfigError("stop here")
    monkeypatch.setattr("pointad.train.loop.train", fake_train)
    for name in ("../../x", "/abs/x", "..", ""):
        monkeypatch.setattr("pointad.train.sweep.store_dataset", lambda store, name=name: name)
        _one_error(_invoke(["train", "run", "--store", "s.zarr", "--model", "tiny", "--class", "c", "--device",
                            "cpu"]), "stop here")
    assert [p.parent for p in seen] == [Path("runs")] * 4
    assert len({p.name for p in seen}) == 4 and all("/" not in p.name and not p.name.startswith(".") for p in seen)
    assert list(here.iterdir()) == []


# -- the scheduler of render build --------------------------------------------------------------------------

def test_scheduler_addresses_that_are_no_dask_scheduler_are_one_line(mvtec_dataset, here, monkeypatch):
    import socket
    import threading

    from pointad.render import build
    monkeypatch.setattr(build, "SCHEDULER_TIMEOUT", 1.0)
    _, entry = mvtec_dataset
    web = socket.socket()
    web.bind(("127.0.0.1", 0))
    web.listen(4)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)

    def answer_like_a_web_server():
        while True:
            try:
                connection, _ = web.accept()
            except OSError:
                return
            connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            connection.close()
    threading.Thread(target=answer_like_a_web_server, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    args = ["render", "build", "--format", "mvtec3d", "--root", entry.root, "--out", "s.zarr", "--backend", "dask"]
    try:
        for address, message in [
                ("foo::bar", "--scheduler foo::bar: not a dask scheduler address"),
                ("tcp://", "--scheduler tcp://: not a dask scheduler address (no host)"),
                (f"tcp://127.0.0.1:{web.getsockname()[1]}", "the service there is not a dask scheduler"),
                (f"tcp://127.0.0.1:{silent.getsockname()[1]}", "nothing answered within 1 s"),
                (f"tcp://127.0.0.1:{closed_port}", "cannot connect")]:
            _one_error(_invoke([*args, "--scheduler", address]), message)
    finally:
        web.close()
        silent.close()
    result = _invoke([*args[:-2], "--scheduler", "tcp://127.0.0.1:1"])  # no --backend dask
    assert result.exit_code == 2 and "--scheduler is a dask scheduler's address" in result.output
    assert list(here.iterdir()) == []


# -- training: divergence, resuming a damaged run ------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(mvtec_dataset, tmp_path_factory):
    """(store, run folder trained one epoch): six cookie test samples, three views at CLIP's 336 px, splat."""
    from pointad.render.build import build_store
    from pointad.shared.store import open_store
    from pointad.train.loop import train
    _, entry = mvtec_dataset
    root = tmp_path_factory.mktemp("bounds")
    store = root / "renders.zarr"
    options = RenderOptions(views=3, image_size=336, supersample=1, point_size=2, renderer="splat")
    assert build_store(entry, store, options, classes=["cookie"], splits=["test"]).rendered == 6
    run = root / "run"
    dataset = open_store(store).choose_dataset(None)  # as `train run` fills it in
    train(TrainConfig(store=str(store), class_name="cookie", dataset=dataset, model="tiny", epochs=1), run)
    return store, run


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("features.zarr"))
    return to


def _resume(store, run, epochs=2):
    """`train run --resume` of `run`, its feature cache beside it (`run`.features.zarr: absent before)."""
    return _invoke(["train", "run", "--store", store, "--class", "cookie", "--model", "tiny", "--epochs", epochs,
                    "--device", "cpu", "--out", run, "--resume", "--features", _features(run)])


def _features(run: Path) -> Path:
    return run.with_name(f"{run.name}.features.zarr")


def test_divergence_stops_naming_the_epoch_and_writes_no_nan_checkpoint(trained, tmp_path, monkeypatch):
    from pointad.train.loop import Trainer
    store, run = trained
    run = _copy_run(run, tmp_path / "run")
    loss = Trainer.batch_loss

    def diverging(self, batch):  # as a too large learning rate does: the loss overflows to inf, grads to NaN
        total, parts, scores = loss(self, batch)
        return total * math.inf, parts, scores
    monkeypatch.setattr(Trainer, "batch_loss", diverging)
    metrics = (run / "metrics.csv").read_text()
    _one_error(_resume(store, run, 3), f"{run}: epoch 2: training diverged, the loss (total",
               "checkpoints up to epoch 1 are kept. Lower --lr (this run: 0.001)")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_1.pt"]
    assert (run / "metrics.csv").read_text() == metrics


@pytest.mark.parametrize("damage, message", [
    ("epoch,total\nabc,1\n", "metrics.csv: damaged metrics file (line 2, epoch: 'abc' is not a number)"),
    ("epoch,total\n1,1,7\n", "metrics.csv: damaged metrics file (line 2 has 2 columns"),
    ("loss\n1\n", "metrics.csv: damaged metrics file (no 'epoch' column)"),
    (b"epoch,total\n1,\x00\xff\n", "metrics.csv: unreadable metrics file"),
])
def test_resume_with_a_damaged_metrics_file_stops_before_any_work(trained, tmp_path, damage, message):
    store, run = trained
    run = _copy_run(run, tmp_path / "run")
    path = run / "metrics.csv"
    path.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
    _one_error(_resume(store, run), f"{path}: ", message.split(": ", 1)[1])
    assert not _features(run).exists(), "features were computed before the check"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_1.pt"]


@pytest.mark.parametrize("damage, message", [
    (lambda o: o["state"][0].update(exp_avg=torch.zeros(3)), "parameter 0: exp_avg is not a tensor of shape"),
    (lambda o: o["state"][1].update(exp_avg_sq=torch.full_like(o["state"][1]["exp_avg_sq"], math.nan)),
     "parameter 1: exp_avg_sq holds NaN or inf"),
    (lambda o: o["param_groups"][0].update(lr=math.inf), "lr inf"),
    (lambda o: o["param_groups"][0].update(params=[0, 1, 2]), "parameters [0, 1, 2], the prompts have 2"),
    (lambda o: o.pop("state"), "not a mapping of 'state' and 'param_groups'"),
])
def test_resume_with_a_damaged_optimizer_state_stops_before_any_work(trained, tmp_path, damage, message):
    store, run = trained
    run = _copy_run(run, tmp_path / "run")
    checkpoint = run / "checkpoints" / "epoch_1.pt"
    payload = torch.load(checkpoint, weights_only=True)
    damage(payload["optimizer"])
    torch.save(payload, checkpoint)
    error = _one_error(_resume(store, run), f"{checkpoint}: damaged ")
    # refused by load_checkpoint's own checks (train/model/checkpoint.py) or, at the latest, before resuming
    assert f"damaged optimizer state ({message}" in error or "damaged pointad checkpoint (optimizer" in error, error
    assert not _features(run).exists(), "features were computed before the check"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_1.pt"]


def _nan_run(run: Path, to: Path) -> Path:
    """A copy of `run` whose prompts are NaN (what a diverged run wrote before runs were checked)."""
    to = _copy_run(run, to)
    checkpoint = to / "checkpoints" / "epoch_1.pt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["prompts"]["ctx"] = torch.full_like(payload["prompts"]["ctx"], math.nan)
    torch.save(payload, checkpoint)
    return to


def _report_args(store, run, out):
    dataset = json.loads((run / "config.json").read_text())["train"]["dataset"]
    return ["eval", "report", "--store", store, "--checkpoints", run, "--dataset", dataset, "--setting",
            "cross-dataset", "--device", "cpu", "--report-format", "json", "--out", out]


def _a_cloud(mvtec_dataset) -> Path:
    return next(Path(mvtec_dataset[1].root).glob("cookie/test/*/xyz/*.tiff"))


def test_a_checkpoint_of_nan_prompts_is_one_line_naming_it(trained, tmp_path, mvtec_dataset):
    """Refused when the checkpoint is read, or at the latest when its scores are: never a table or a file of NaN."""
    store, run = trained
    bad = _nan_run(run, tmp_path / "nan-run")
    out, scores = tmp_path / "report.json", tmp_path / "scores"
    error = _one_error(_invoke(_report_args(store, bad, out)), str(bad))
    assert "NaN" in error and not out.exists()
    error = _one_error(_invoke(["detect", _a_cloud(mvtec_dataset), "--checkpoint", bad, "--device", "cpu", "--out",
                                scores, "--threshold", "0.5"]), str(bad))
    assert "NaN" in error and (not scores.exists() or list(scores.iterdir()) == [])


def _nan_at_first(scored):
    """A `SampleScores` as non-finite prompts or weights make it: the sample score and one point score NaN."""
    points = scored.point_scores.copy()
    points[0] = math.nan
    return dataclasses.replace(scored, score=math.nan, point_scores=points)


def test_eval_report_refuses_non_finite_scores_naming_run_class_and_sample(trained, tmp_path, monkeypatch):
    from pointad.eval import report, scoring
    store, run = trained

    def nan_scores(*args, **kwargs):
        for per_row in scoring.score_store_runs(*args, **kwargs):
            yield [_nan_at_first(scored) for scored in per_row]
    monkeypatch.setattr(report, "score_store_runs", nan_scores)
    out = tmp_path / "report.json"
    _one_error(_invoke(_report_args(store, run, out)),
               f"{run / 'checkpoints' / 'epoch_1.pt'}: class cookie: sample cookie/",
               "the sample score is nan; 1 of ", " point scores are NaN or inf")
    assert not out.exists()


def test_detect_refuses_non_finite_scores_and_writes_nothing(trained, tmp_path, mvtec_dataset, monkeypatch):
    from pointad.eval import detect, scoring
    store, run = trained
    monkeypatch.setattr(detect, "score_arrays", lambda *a, **k: _nan_at_first(scoring.score_arrays(*a, **k)))
    cloud, out = _a_cloud(mvtec_dataset), tmp_path / "scores"
    _one_error(_invoke(["detect", cloud, "--checkpoint", run, "--device", "cpu", "--out", out, "--threshold", "0.5"]),
               f"checkpoint {run}: sample {Path(cloud).name}: the sample score is nan", "train again")
    assert not out.exists() or list(out.iterdir()) == []


# -- never a traceback ---------------------------------------------------------------------------------------

NUMBERS = st.one_of(st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e400", "9" * 400, "-0", "0x10", "", " ", "abc",
                                     "1_000"]))
COMMANDS = [
    (TRAIN, ("--batch-size", "--lr", "--epochs", "--seed", "--loader-workers", "--dpam-start", "--cache-memory")),
    (["render", "build"], ("--views", "--image-size", "--supersample", "--max-points", "--knn", "--point-size",
                           "--downsample", "--angle-shift", "--workers", "--threads")),
    (["eval", "report", "--store", "absent.zarr"], ("--batch-size", "--mutual-fraction", "--figure-samples",
                                                     "--mutual-radii", "--rescore-k", "--train-epochs")),
    (["detect", "absent.ply", "--checkpoint", "run"], ("--views", "--supersample", "--point-size", "--threshold",
                                                       "--mutual-fraction")),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.sampled_from(COMMANDS), data=st.data())
def test_any_number_in_any_option_is_never_a_traceback(command, data):
    base, options = command
    option = data.draw(st.sampled_from(options))
    value = data.draw(NUMBERS)
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):  # no runs/ of the repository's seen
        result = _invoke([*base, f"{option}={value}", *(["--out", "run"] if base is TRAIN else [])])
        assert result.exit_code in (1, 2), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.output
        assert not Path("run", "checkpoints").exists()
