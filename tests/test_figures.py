"""The per-run figures of ``sam_jax.training.hooks.plots``: each writes a PNG."""

import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.training.hooks import plot_sharpness, reliability_diagram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_plot_sharpness_writes_png(tmp_path):
    records = [
        {
            "step": s,
            "train/loss": 1.0 / (s + 1),
            "curvature/hessian_top1": 10.0 + s,
            "curvature/batch_sharpness": 5.0 + s,
            "curvature/hessian_trace": 50.0,
            "curvature/hessian_trace_stderr": 2.0,
            "curvature/kappa_min_theta": -0.5,
            "curvature/density_nodes": [0.0, 1.0],
        }
        for s in (0, 100, 200)
    ]
    records.insert(1, {"step": 50, "train/loss": 0.5})
    path = tmp_path / "sharpness.png"
    plot_sharpness(records, str(path), learning_rate=0.1)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="curvature"):
        plot_sharpness([{"step": 0, "train/loss": 1.0}], str(path))


def test_reliability_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(9)
    logits = 3.0 * rng.standard_normal((2000, 5))
    probs = softmax(logits)
    # Labels drawn at temperature 2 make the model's probabilities overconfident.
    labels = np.array([rng.choice(5, p=row) for row in softmax(logits / 2.0)])
    path = reliability_diagram(
        jnp.asarray(probs),
        jnp.asarray(labels),
        path=str(tmp_path / "a" / "rd.png"),
        title="overconfident synthetic model",
    )
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
