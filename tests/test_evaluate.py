"""experiments.evaluate: saved run -> calibration suite, reliability PNG, OOD AUROC, ensembles, MC-dropout."""

import json
import os
import struct

import ml_collections
import numpy as np
import pytest
import scipy.special
import sklearn.metrics

from experiments.configs.evaluate import get_config
from experiments.evaluate import evaluate_checkpoint
from sam_jax import calibration, data
from sam_jax.training import load_trained, predict, train_and_evaluate
from tests.test_training import digits_config


def _write_idx(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    kwargs = ml_collections.ConfigDict({"widths": (32,), "activation": "relu", "dropout_rate": 0.2})
    workdirs = []
    for seed in (0, 1):
        workdir = str(root / f"seed{seed}")
        train_and_evaluate(digits_config(workdir, seed=seed, **{"model.kwargs": kwargs}))
        workdirs.append(workdir)
    ood_dir = root / "data" / "mnist"
    ood_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(str(ood_dir / "t10k-images-idx3-ubyte"), rng.integers(0, 256, (300, 8, 8)))
    _write_idx(str(ood_dir / "t10k-labels-idx1-ubyte"), rng.integers(0, 10, (300,)))
    return workdirs, str(root / "data")


def _config(checkpoint: str, **overrides) -> ml_collections.ConfigDict:
    config = get_config()
    config.checkpoint = checkpoint
    config.update(overrides)
    return config


def test_point_evaluation_matches_the_loop_and_writes_files(trained_runs):
    (workdir, _), data_dir = trained_runs
    results = evaluate_checkpoint(_config(workdir, ood_dataset="mnist", ood_data_dir=data_dir))
    output = os.path.join(workdir, "evaluation")
    assert os.path.getsize(os.path.join(output, "reliability_test.png")) > 0
    assert json.load(open(os.path.join(output, "evaluation.json")))["predictive"] == "point"
    run, state = load_trained(workdir)
    logits = predict(run, state.params, state.model_state, run.data.test)
    direct = calibration.ece(np.asarray(calibration.predictive_average([lambda: logits])), run.data.test.labels)
    np.testing.assert_allclose(results["test"]["ece"], float(direct), atol=1e-5)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    np.testing.assert_allclose(results["test"]["accuracy"], summary["test/accuracy"], atol=1e-6)
    # Digits vs uniform noise images: the detector must beat chance clearly.
    assert results["ood"]["auroc_max_prob"] > 0.8 and results["ood"]["num_ood"] == 300


def test_ensemble_and_mc_dropout_average_probabilities(trained_runs):
    (first, second), _ = trained_runs
    ensemble = evaluate_checkpoint(_config(first, ensemble=second, output_dir=os.path.join(first, "ens")))
    assert ensemble["predictive"] == "ensemble" and ensemble["members"] == 2
    runs = [load_trained(w) for w in (first, second)]
    member_logits = [predict(run, state.params, state.model_state, run.data.test) for run, state in runs]
    probs = np.mean([scipy.special.softmax(logits, axis=1) for logits in member_logits], axis=0)
    np.testing.assert_allclose(
        ensemble["test"]["accuracy"], np.mean(probs.argmax(1) == runs[0][0].data.test.labels), atol=1e-6
    )
    mc = evaluate_checkpoint(_config(first, mc_dropout_samples=8, output_dir=os.path.join(first, "mc")))
    point_nll = json.load(open(os.path.join(first, "summary.json")))["test/nll"]
    assert mc["predictive"] == "mc_dropout"
    assert np.isfinite(mc["test"]["nll"]) and mc["test"]["nll"] != point_nll


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        evaluate_checkpoint(_config(""))
    with pytest.raises(FileNotFoundError, match="not a sam_jax run directory"):
        evaluate_checkpoint(_config(str(tmp_path)))


def _write_cifar10_and_shifts(root) -> None:
    """Tiny CIFAR-10 release (class = mean brightness band), CIFAR-10-C noise, SVHN: real file formats."""
    import pickle

    import scipy.io

    rng = np.random.default_rng(0)

    def images_for(labels):
        base = (labels[:, None, None, None] * 25 + 10).astype(np.float64)
        return np.clip(base + rng.normal(0, 8, (len(labels), 32, 32, 3)), 0, 255).astype(np.uint8)

    cifar = root / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, 60)
        data = images_for(labels).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        with open(cifar / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, f)
    corrupted = root / "CIFAR-10-C"
    corrupted.mkdir()
    labels = np.tile(rng.integers(0, 10, 40), 5)
    severity = np.repeat(np.arange(1, 6), 40)[:, None, None, None]
    noisy = images_for(labels).astype(np.float64) + rng.normal(0, 1, (200, 32, 32, 3)) * 20 * severity
    np.save(corrupted / "gaussian_noise.npy", np.clip(noisy, 0, 255).astype(np.uint8))
    np.save(corrupted / "labels.npy", labels.astype(np.int64))
    svhn = root / "svhn"
    svhn.mkdir()
    scipy.io.savemat(
        svhn / "test_32x32.mat",
        {"X": rng.integers(0, 256, (32, 32, 3, 50)).astype(np.uint8), "y": rng.integers(1, 11, (50, 1))},
    )


def test_cifar10_run_gets_corruption_and_svhn_ood_results(tmp_path):
    data_root = tmp_path / "data"
    _write_cifar10_and_shifts(data_root)
    workdir = str(tmp_path / "run")
    train_and_evaluate(
        digits_config(
            workdir, **{"data.name": "cifar10", "data.data_dir": str(data_root), "data.val_size": 50, "batch_size": 50}
        )
    )
    results = evaluate_checkpoint(
        _config(workdir, ood_dataset="svhn", ood_data_dir=str(data_root), corruption_data_dir=str(data_root))
    )
    rows = results["corruptions"]
    assert [(r["corruption"], r["severity"]) for r in rows] == [("gaussian_noise", s) for s in range(1, 6)]
    # Each row's accuracy and NLL, and the OOD AUROC, recomputed from the model's logits.
    run, state = load_trained(workdir)

    def probabilities(dataset) -> np.ndarray:
        return scipy.special.softmax(predict(run, state.params, state.model_state, run.data.prepare(dataset)), axis=1)

    for row in rows:
        shifted = data.load_dataset(
            "cifar10_corrupted", f"gaussian_noise_{row['severity']}", data_dir=str(data_root), download=False
        )
        probs = probabilities(shifted)
        np.testing.assert_allclose(row["accuracy"], np.mean(probs.argmax(1) == shifted.labels), atol=1e-6)
        true_class = probs[np.arange(len(shifted.labels)), shifted.labels]
        np.testing.assert_allclose(row["nll"], -np.mean(np.log(true_class)), rtol=1e-4)
    assert rows[0]["accuracy"] > rows[-1]["accuracy"]  # stronger noise hurts
    assert os.path.exists(os.path.join(workdir, "evaluation", "corruptions.csv"))
    assert results["ood"]["num_ood"] == 50

    def negative_entropy(probs: np.ndarray) -> np.ndarray:
        return np.sum(probs * np.log(np.maximum(probs, 1e-30)), axis=1)

    test_probs = probabilities(data.load_dataset("cifar10", "test", data_dir=str(data_root)))
    ood_probs = probabilities(data.load_dataset("svhn", "test", data_dir=str(data_root)))
    scores = np.concatenate([negative_entropy(test_probs), negative_entropy(ood_probs)])
    is_in = np.concatenate([np.ones(len(test_probs)), np.zeros(len(ood_probs))])
    np.testing.assert_allclose(results["ood"]["auroc_entropy"], sklearn.metrics.roc_auc_score(is_in, scores), atol=1e-3)


def test_bsam_run_is_evaluated_with_posterior_samples(tmp_path):
    workdir = str(tmp_path / "bsam")
    train_and_evaluate(
        digits_config(workdir, **{"optimizer.name": "bsam", "optimizer.learning_rate": 0.5, "optimizer.bsam.rho": 0.01})
    )
    sampled = evaluate_checkpoint(_config(workdir, posterior_samples=4, output_dir=str(tmp_path / "sampled")))
    mean_only = evaluate_checkpoint(_config(workdir, posterior_samples=0, output_dir=str(tmp_path / "mean")))
    assert (sampled["predictive"], mean_only["predictive"]) == ("posterior", "point")
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    np.testing.assert_allclose(mean_only["test"]["nll"], summary["test/nll"], rtol=1e-5)
    assert np.isfinite(sampled["test"]["nll"]) and sampled["test"]["nll"] != mean_only["test"]["nll"]


def test_a_run_saved_before_a_config_block_existed_still_loads(tmp_path):
    workdir = str(tmp_path / "old")
    train_and_evaluate(digits_config(workdir, num_steps=2, eval_every_steps=2, eval_at_start=False))
    path = os.path.join(workdir, "config.json")
    saved = json.load(open(path))
    del saved["distributed"], saved["optimizer"]["vi"]  # blocks added after this run was "saved"
    json.dump(saved, open(path, "w"))
    run, state = load_trained(workdir)
    assert int(state.step) == 2 and run.config.distributed.to_dict() == digits_config(workdir).distributed.to_dict()
