"""The results store: packing and unpacking are lossless, appends keep the committed bytes, and every
committed report rebuilds byte for byte from its store."""

import gzip
import json
import os

import pytest

from experiments import bsam_table1, calibration_benchmark, curvature_calibration, grid, runner, store
from experiments.configs import bsam_table1 as bsam_table1_presets
from experiments.configs import calibration_benchmark as benchmark_presets
from experiments.configs import curvature_calibration as curvature_presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each committed store: its driver's experiment and the config preset that made it.
COMMITTED = {
    "bsam_table1": (bsam_table1.EXPERIMENT, bsam_table1_presets, "fmnist"),
    "bsam_table1_mnist": (bsam_table1.EXPERIMENT, bsam_table1_presets, "mnist"),
    "calibration_benchmark_fmnist": (calibration_benchmark.EXPERIMENT, benchmark_presets, "fmnist"),
    "curvature_calibration_faithful": (curvature_calibration.EXPERIMENT, curvature_presets, "faithful"),
    "curvature_calibration_cifar10": (curvature_calibration.EXPERIMENT, curvature_presets, "faithful_cifar10"),
    "curvature_calibration_fmnist_horizon": (
        curvature_calibration.EXPERIMENT,
        curvature_presets,
        "faithful_fmnist_horizon",
    ),
}


def _write(path, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _tree(root) -> dict[str, bytes]:
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                files[os.path.relpath(os.path.join(directory, name), root)] = f.read()
    return files


def _workdir(root) -> None:
    _write(os.path.join(root, "tuned.json"), '{"learning_rate": 0.1}\n')
    _write(os.path.join(root, "sgd/cross_entropy/lr0.1/seed0/config.json"), '{"seed": 0, "name": "ü"}')
    _write(os.path.join(root, "sgd/cross_entropy/lr0.1/seed0/metrics.jsonl"), '{"step": 1}\r\n{"step": 2}\n')
    _write(os.path.join(root, "sgd/cross_entropy/lr0.1/seed0/checkpoints/1/state"), "binary")
    _write(os.path.join(root, "sgd/cross_entropy/lr0.1/seed0/.lock"), "")
    _write(os.path.join(root, "report/table1.md"), "a report")


def test_pack_then_unpack_gives_the_records_back_byte_for_byte(tmp_path):
    _workdir(tmp_path / "work")
    manifest = store.pack(str(tmp_path / "work"), str(tmp_path / "store"))
    assert (manifest["runs"], manifest["files"]) == (2, 3)
    store.unpack(str(tmp_path / "store"), str(tmp_path / "copy"))
    expected = {k: v for k, v in _tree(tmp_path / "work").items() if "checkpoints" not in k and "report" not in k}
    del expected[os.path.join("sgd/cross_entropy/lr0.1/seed0", ".lock")]
    assert _tree(tmp_path / "copy") == expected
    # Packing is deterministic (no timestamp in the gzip header), so an unchanged store stays unchanged.
    before = (tmp_path / "store" / store.STORE_FILE).read_bytes()
    store.pack(str(tmp_path / "work"), str(tmp_path / "store"))
    assert (tmp_path / "store" / store.STORE_FILE).read_bytes() == before


def test_append_adds_a_member_and_keeps_the_committed_bytes(tmp_path):
    _workdir(tmp_path / "work")
    store.pack(str(tmp_path / "work"), str(tmp_path / "store"))
    path = tmp_path / "store" / store.STORE_FILE
    before = path.read_bytes()
    store.append_run(str(tmp_path / "store"), "sgd/cross_entropy/lr0.1/seed1", {"summary.json": "{}"})
    store.append_run(str(tmp_path / "store"), "sgd/cross_entropy/lr0.1/seed1", {"summary.json": "{}"})  # no-op
    store.append_run(str(tmp_path / "store"), "", {"tuned.json": "{}"})  # replaces the earlier line
    after = path.read_bytes()
    assert after.startswith(before)
    with gzip.open(path, "rt") as f:
        assert len(f.readlines()) == 4
    runs = store.read_store(str(tmp_path / "store"))
    assert runs[""] == {"tuned.json": "{}"} and runs["sgd/cross_entropy/lr0.1/seed1"] == {"summary.json": "{}"}
    with open(tmp_path / "store" / store.MANIFEST_FILE) as f:
        assert json.load(f)["runs"] == 3


def test_unpack_refuses_a_damaged_store_and_keeps_finished_runs(tmp_path):
    _workdir(tmp_path / "work")
    store.pack(str(tmp_path / "work"), str(tmp_path / "store"))
    manifest_path = tmp_path / "store" / store.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    _write(str(tmp_path / "copy/sgd/cross_entropy/lr0.1/seed0/summary.json"), "{}")
    assert store.unpack(str(tmp_path / "store"), str(tmp_path / "copy"), overwrite=False) == [""]
    manifest["sha256"]["tuned.json"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="tuned.json"):
        store.unpack(str(tmp_path / "store"), str(tmp_path / "elsewhere"))


def test_no_run_records_in_docs():
    found = [d for d, _, names in os.walk(os.path.join(ROOT, "docs")) if "metrics.jsonl" in names]
    assert not found, found


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_report_rebuilds_byte_for_byte_from_its_store(name, tmp_path):
    experiment, presets, preset = COMMITTED[name]
    committed = os.path.join(ROOT, "docs", "results", name, "report")
    out = runner.report(
        experiment, presets.get_config(preset), store_dir=os.path.join(ROOT, "results", name), report_dir=str(tmp_path)
    )
    rebuilt, expected = _tree(out), _tree(committed)
    assert sorted(rebuilt) == sorted(expected)
    different = [file for file in expected if rebuilt[file] != expected[file]]
    assert not different, f"{name}: {different} differ from the committed report"


def _fake_experiment(tmp_path) -> tuple[runner.Experiment, object]:
    """An experiment of two finished jobs and one started one, whose report lists what it read."""
    config = curvature_presets.get_config("quick")
    config.workdir = str(tmp_path / "work")
    config.grid.optimizers = {"sgd": {"learning_rates": (0.1, 0.2)}}
    config.grid.seeds = (0,)

    def report(config, jobs, out):
        with open(os.path.join(out, "read.json"), "w") as f:
            json.dump({job.name: sorted(os.listdir(job.workdir)) for job in jobs if os.path.isdir(job.workdir)}, f)
        return out

    experiment = runner.Experiment(
        name="fake",
        default_config="",
        jobs=grid.expand_grid,
        report=report,
        report_file="read.json",
        keep=lambda config, job: store.Kept(metrics=store.kept_keys(("step", "train/ece"))),
        grid_files=lambda config: ["tuned.json"],
    )
    done, started = grid.expand_grid(config)
    for job in (done, started):
        _write(os.path.join(job.workdir, "config.json"), "{}")
        _write(os.path.join(job.workdir, "metrics.jsonl"), '{"step": 0, "train/ece": 0.5, "train/loss": 1.0}\n')
    _write(os.path.join(done.workdir, "summary.json"), "{}")
    _write(os.path.join(config.workdir, "tuned.json"), "{}")
    return experiment, config


def test_export_appends_what_keep_names_and_report_reads_the_store(tmp_path):
    experiment, config = _fake_experiment(tmp_path)
    runner.main(experiment, config, "export", store_dir=str(tmp_path / "store"))
    runs = store.read_store(str(tmp_path / "store"))
    assert sorted(runs) == ["", os.path.join("sgd", "cross_entropy", "lr0.1", "seed0")]  # the started job is not kept
    assert runs[""] == {"tuned.json": "{}"}
    kept = runs[os.path.join("sgd", "cross_entropy", "lr0.1", "seed0")]
    assert kept["metrics.jsonl"] == '{"step": 0, "train/ece": 0.5}\n'
    out = runner.report(experiment, config, store_dir=str(tmp_path / "store"), report_dir=str(tmp_path / "report"))
    with open(os.path.join(out, "read.json")) as f:
        assert json.load(f) == {
            os.path.join("sgd", "cross_entropy", "lr0.1", "seed0"): ["config.json", "metrics.jsonl", "summary.json"]
        }
    # Without a store, export writes the same records to <workdir>/compact.
    runner.main(experiment, config, "export")
    assert store.collect(os.path.join(config.workdir, "compact")) == runs


def test_restore_in_progress_copies_unfinished_jobs_without_a_checkpoint_here(tmp_path):
    job = os.path.join("sam", "cross_entropy", "lr0.1", "seed0")
    other = os.path.join("sgd", "cross_entropy", "lr0.1", "seed0")
    for path in (job, other):
        _write(str(tmp_path / "store" / store.IN_PROGRESS_DIR / path / "config.json"), "{}")
        _write(str(tmp_path / "store" / store.IN_PROGRESS_DIR / path / "checkpoints" / "20" / "state"), "saved")
    _write(str(tmp_path / "work" / other / "checkpoints" / "40" / "state"), "newer")  # this workdir got further
    assert store.restore_in_progress(str(tmp_path / "store"), str(tmp_path / "work")) == [job]
    assert (tmp_path / "work" / job / "checkpoints" / "20" / "state").read_text() == "saved"
    assert not (tmp_path / "work" / other / "checkpoints" / "20").exists()
