"""BatchEnsemble, MIMO and rank-1 BNN wrappers (sam_jax/models/ensembles.py): shapes over mlp, lenet5
and resnet20, exact parameter increments, NumPy references for the rank-1 layers, MIMO's label
alignment and the rank-1 KL penalty."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sam_jax.models import MIMO, BatchEnsemble, LeNet5, create_model
from sam_jax.models.ensembles import mimo_member_indices, rank1_kl_divergence

# As in test_model_zoo: these small programs run a few times, so compile them without LLVM's optimisations.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)

WRAPPERS = ("batch_ensemble", "mimo", "rank1_bnn")
# backbone -> (kwargs, input shape of a batch of 2).
BACKBONES = {
    "mlp": ({"widths": (8, 6)}, (2, 5)),
    "lenet5": ({}, (2, 16, 16)),
    "resnet20": ({}, (2, 8, 8, 3)),
}


def _inputs(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    # NumPy, not jax.random: every eager JAX op on a new shape is one more compilation.
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _num_params(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract_params(model: nn.Module, shape: tuple[int, ...]) -> Any:
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]


@functools.partial(fast_jit, static_argnums=0)
def _init(model: nn.Module, x: jax.Array) -> tuple[jax.Array, dict]:
    """Evaluation-mode logits at initialisation, and the variables."""
    return model.init_with_output(jax.random.key(0), x, train=False)


@functools.partial(fast_jit, static_argnums=0)
def _evaluate(model: nn.Module, variables: dict, x: jax.Array) -> jax.Array:
    return model.apply(variables, x, train=False)


@functools.partial(fast_jit, static_argnums=0)
def _train_forward(model: nn.Module, variables: dict, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict]:
    mutable = [name for name in variables if name != "params"] + ["penalties"]
    return model.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=mutable)


def _rank1_layers(params: Any) -> dict[tuple[str, ...], dict]:
    """path -> the parameters of every Dense / Conv (the dicts holding a ``kernel``)."""
    flat = traverse_util.flatten_dict(params)
    paths = {path[:-1] for path in flat if path[-1] == "kernel"}
    return {path: {key[-1]: value for key, value in flat.items() if key[:-1] == path} for path in paths}


def _perturbed(params: Any, seed: int, names: tuple[str, ...], scale: float = 0.3) -> Any:
    """``params`` with Gaussian noise added to the leaves called one of ``names`` (NumPy: no compiles)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(params)
    noisy = {
        path: np.asarray(value) + scale * rng.standard_normal(value.shape).astype(np.float32)
        if path[-1] in names
        else value
        for path, value in flat.items()
    }
    return traverse_util.unflatten_dict(noisy)


@functools.cache
def _initialised(wrapper: str, backbone: str) -> tuple[nn.Module, np.ndarray, jax.Array, dict]:
    """The wrapper over ``BACKBONES[backbone]`` (10 classes, default options), a batch of 2, its
    evaluation logits and the variables at initialisation; cached, so tests share the compilations."""
    kwargs, shape = BACKBONES[backbone]
    model = create_model(wrapper, 10, backbone=backbone, backbone_kwargs=kwargs)
    x = _inputs(shape)
    logits, variables = _init(model, x)
    return model, x, logits, variables


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_evaluation_shapes_and_members_differ_at_init(wrapper, backbone):
    model, _, logits, _ = _initialised(wrapper, backbone)
    members = model.ensemble_size
    assert logits.shape == (2, members, 10) and np.all(np.isfinite(logits))
    for k in range(1, members):
        assert not np.allclose(logits[:, 0], logits[:, k], atol=1e-4)


# Not the sampled rank-1 ResNet-20: compiling it takes ~5 s on a CPU, and its parts are covered
# (BatchNorm on the tiled batch by batch_ensemble/resnet20, sampled convolutions by rank1_bnn/lenet5).
@pytest.mark.parametrize(
    "wrapper, backbone",
    [(w, b) for w in WRAPPERS for b in sorted(BACKBONES) if (w, b) != ("rank1_bnn", "resnet20")],
)
def test_training_forward_shapes_and_model_state(wrapper, backbone):
    model, x, _, variables = _initialised(wrapper, backbone)
    logits, state = _train_forward(model, variables, x, jax.random.key(2))
    assert logits.shape == (2, model.ensemble_size, 10) and np.all(np.isfinite(logits))
    assert ("batch_stats" in state) == (backbone == "resnet20")
    assert ("penalties" in state) == (wrapper == "rank1_bnn")
    if "batch_stats" in state:
        old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(state["batch_stats"])
        assert all(not np.allclose(a, b) for a, b in zip(old, new))


def _batch_ensemble_increment(fan_in: int, fan_out: int) -> int:
    return fan_in + 2 * fan_out  # r, s and the bias offsets c, per member


def _rank1_increment(fan_in: int, fan_out: int) -> int:
    return 2 * (fan_in + fan_out) + fan_out  # mean and rho of r and s, and c, per member


def test_batch_ensemble_and_rank1_parameter_increments():
    # LeNet-5 on 28x28: conv 1->6, conv 6->16, dense 400->120, 120->84, 84->10.
    lenet = [(1, 6), (6, 16), (400, 120), (120, 84), (84, 10)]
    assert 4 * sum(_batch_ensemble_increment(i, o) for i, o in lenet) == 4_332
    assert 4 * sum(_rank1_increment(i, o) for i, o in lenet) == 7_720
    plain = _num_params(_abstract_params(create_model("lenet5", 10), (1, 28, 28)))
    assert _num_params(_abstract_params(create_model("batch_ensemble", 10), (1, 28, 28))) - plain == 4_332
    assert _num_params(_abstract_params(create_model("rank1_bnn", 10), (1, 28, 28))) - plain == 7_720

    # Every Dense / Conv of every backbone gains exactly these [K, fan_in] / [K, fan_out] parameters.
    for backbone, (kwargs, shape) in BACKBONES.items():
        base = _abstract_params(create_model(backbone, 10, **kwargs), shape)
        layers = [(kernel.shape[-2], kernel.shape[-1]) for kernel in jax.tree.leaves(base) if kernel.ndim >= 2]
        rank1_names = ("fast_in_mean", "fast_in_rho", "fast_out_mean", "fast_out_rho", "member_bias")
        for wrapper, increment, names in [
            ("batch_ensemble", _batch_ensemble_increment, ("fast_in", "fast_out", "member_bias")),
            ("rank1_bnn", _rank1_increment, rank1_names),
        ]:
            model = create_model(wrapper, 10, backbone=backbone, backbone_kwargs=kwargs, ensemble_size=3)
            params = _abstract_params(model, shape)
            assert _num_params(params) - _num_params(base) == 3 * sum(increment(i, o) for i, o in layers)
            for layer in _rank1_layers(params).values():
                fan_in, fan_out = layer["kernel"].shape[-2:]
                assert set(layer) - {"kernel", "bias"} == set(names)
                for name in names:
                    assert layer[name].shape == (3, fan_in if "_in" in name else fan_out)


def test_mimo_parameter_increments():
    # Only the first layer's fan-in and the head's outputs grow, by (M - 1) times.
    members = 3
    mlp = {"widths": (8, 6)}
    plain = _num_params(_abstract_params(create_model("mlp", 10, **mlp), (1, 5)))
    params = _abstract_params(create_model("mimo", 10, backbone="mlp", backbone_kwargs=mlp), (1, 5))
    assert _num_params(params) - plain == (members - 1) * (5 * 8 + 10 * (6 + 1))
    plain = _num_params(_abstract_params(create_model("lenet5", 10), (1, 28, 28)))
    params = _abstract_params(create_model("mimo", 10), (1, 28, 28))
    assert _num_params(params) - plain == (members - 1) * (5 * 5 * 1 * 6 + 10 * (84 + 1))


def test_batch_ensemble_member_is_the_mlp_with_rank1_scaled_weights():
    model, x, _, variables = _initialised("batch_ensemble", "mlp")
    params = _perturbed(variables["params"], 0, ("bias", "member_bias"))
    logits = np.asarray(_evaluate(model, {"params": params}, x), np.float64)

    assert list(params) == ["MLP_0"]  # the backbone, auto-named
    layers = [jax.tree.map(lambda v: np.asarray(v, np.float64), params["MLP_0"][f"Dense_{i}"]) for i in range(3)]
    for k in range(model.ensemble_size):
        h = np.asarray(x, np.float64)
        for i, layer in enumerate(layers):
            # Wen et al. 2020, eq. 1: W_k = W * (r_k s_k^T); the bias of member k is b + c_k.
            weight = layer["kernel"] * np.outer(layer["fast_in"][k], layer["fast_out"][k])
            h = h @ weight + layer["bias"] + layer["member_bias"][k]
            h = np.tanh(h) if i < 2 else h
        np.testing.assert_allclose(logits[:, k], h, rtol=1e-5, atol=1e-5)

    def loss(params: Any) -> jax.Array:
        return jnp.sum(jnp.sin(model.apply({"params": params}, x)))

    grads = fast_jit(jax.grad(loss))(params)
    assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree.leaves(grads))


def test_batch_ensemble_with_unit_factors_is_the_backbone():
    # r = s = 1 and c = 0 in every layer (convolutions included): each member is the plain LeNet-5.
    model, x, _, variables = _initialised("batch_ensemble", "lenet5")
    flat = traverse_util.flatten_dict(variables["params"])
    unit = {path: np.ones_like(v) if path[-1].startswith("fast_") else v for path, v in flat.items()}
    logits = _evaluate(model, {"params": traverse_util.unflatten_dict(unit)}, x)
    plain = {path[1:]: v for path, v in flat.items() if path[-1] in ("kernel", "bias")}
    expected = _evaluate(LeNet5(10), {"params": traverse_util.unflatten_dict(plain)}, x)
    for k in range(model.ensemble_size):
        np.testing.assert_allclose(logits[:, k], expected, rtol=1e-5, atol=1e-5)


class _Echo(nn.Module):
    """A backbone whose C logits of member m all equal input channel m, i.e. the id of the example it saw."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.sow("intermediates", "inputs", x)
        return jnp.repeat(x, self.num_classes // x.shape[-1], axis=-1)


@pytest.mark.parametrize("input_repetition", [0.0, 0.5, 1.0])
def test_mimo_logits_are_aligned_with_the_original_labels(input_repetition):
    batch, members, classes = 64, 3, 2
    model = MIMO(_Echo, classes, members, input_repetition)
    ids = np.arange(batch, dtype=np.float32)[:, None]
    train_forward = fast_jit(
        lambda ids: model.apply({}, ids, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["intermediates"])
    )
    logits, state = train_forward(ids)
    # logits[i, m] is member m's prediction for example i, whatever order it saw the batch in.
    np.testing.assert_array_equal(logits, np.broadcast_to(np.arange(batch)[:, None, None], (batch, members, classes)))
    seen = np.asarray(state["intermediates"]["_Echo_0"]["inputs"][0], int)  # [B, M]: row i of member m
    for m in range(members):
        assert sorted(seen[:, m]) == list(range(batch))
    same_row = np.all(seen == seen[:, :1], axis=1)
    if input_repetition == 1.0:
        assert np.all(same_row)
    elif input_repetition == 0.0:
        assert np.mean(same_row) < 0.1
    else:
        assert 0.2 < np.mean(same_row) < 0.8
    # Evaluation: every member sees example i in row i.
    np.testing.assert_array_equal(_evaluate(model, {}, ids), logits)


def test_mimo_alignment_matches_a_numpy_reconstruction_on_lenet():
    model, _, _, variables = _initialised("mimo", "lenet5")
    x = _inputs((6, 16, 16))

    @fast_jit
    def train_forward(variables: dict, x: jax.Array) -> tuple[jax.Array, dict]:
        captured = {}

        def capture(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, LeNet5):
                captured["inputs"], captured["logits"] = args[0], out
            return out

        with nn.intercept_methods(capture):
            logits = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(5)})
        return logits, captured

    logits, captured = train_forward(variables, x)
    inputs, raw = np.asarray(captured["inputs"]), np.asarray(captured["logits"]).reshape(6, 3, 10)
    flat_x = x.reshape(6, -1)
    expected = np.empty((6, 3, 10))
    for m in range(3):
        # Which example member m saw in each row, read off its input channel.
        seen = [int(np.argmin(np.abs(flat_x - inputs[i, ..., m].reshape(-1)).sum(axis=1))) for i in range(6)]
        assert sorted(seen) == list(range(6)) and seen != list(range(6))
        for row, example in enumerate(seen):
            expected[example, m] = raw[row, m]
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)


def test_mimo_evaluation_needs_no_rng_and_training_does():
    model, x, logits, variables = _initialised("mimo", "mlp")
    np.testing.assert_array_equal(_evaluate(model, variables, x), _evaluate(model, variables, x))
    np.testing.assert_allclose(_evaluate(model, variables, x), logits, rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: model.apply(variables, x, train=True))


def test_mimo_member_indices_permute_free_rows_and_fix_shared_rows():
    member_indices = fast_jit(mimo_member_indices, static_argnums=(1, 2))
    for seed in range(5):
        indices = np.asarray(member_indices(jax.random.key(seed), 32, 4, 0.5))
        assert indices.shape == (4, 32)
        for member in indices:
            assert sorted(member) == list(range(32))
        shared = np.all(indices == indices[:1], axis=0)
        # A shared row shows its own example to every member.
        np.testing.assert_array_equal(indices[0][shared], np.arange(32)[shared])
    np.testing.assert_array_equal(member_indices(jax.random.key(0), 32, 4, 1.0), np.tile(np.arange(32), (4, 1)))


def _gaussian_kl_numpy(mean: np.ndarray, rho: np.ndarray, prior_mean: float, prior_std: float) -> float:
    std = np.log1p(np.exp(rho))
    return float(np.sum(np.log(prior_std / std) + (std**2 + (mean - prior_mean) ** 2) / (2 * prior_std**2) - 0.5))


def _rank1_kl_numpy(params: Any, prior_mean: float, prior_std: float) -> float:
    total = 0.0
    for layer in _rank1_layers(params).values():
        for side in ("in", "out"):
            mean, rho = (np.asarray(layer[f"fast_{side}_{p}"], np.float64) for p in ("mean", "rho"))
            total += _gaussian_kl_numpy(mean, rho, prior_mean, prior_std)
    return total


def test_rank1_kl_penalty_matches_the_closed_form():
    model, x, _, variables = _initialised("rank1_bnn", "mlp")
    params = _perturbed(variables["params"], 0, ("fast_in_rho", "fast_out_rho", "fast_in_mean"), 0.5)
    assert len(_rank1_layers(params)) == 3
    _, state = _train_forward(model, {"params": params}, x, jax.random.key(2))
    (kl,) = state["penalties"]["kl"]
    np.testing.assert_allclose(kl, _rank1_kl_numpy(params, model.prior_mean, model.prior_std), rtol=1e-5)
    # Another prior, through the function the model uses.
    kl = fast_jit(rank1_kl_divergence, static_argnums=(1, 2))(params, 0.7, 0.3)
    np.testing.assert_allclose(kl, _rank1_kl_numpy(params, 0.7, 0.3), rtol=1e-5)
    # Nothing is sown in evaluation.
    _, eval_state = jax.eval_shape(lambda: model.apply({"params": params}, x, train=False, mutable=["penalties"]))
    assert not eval_state.get("penalties")


def test_rank1_evaluation_is_batch_ensemble_at_the_means():
    model, x, _, variables = _initialised("rank1_bnn", "lenet5")
    ensemble = _initialised("batch_ensemble", "lenet5")[0]
    assert isinstance(ensemble, BatchEnsemble) and ensemble.ensemble_size == model.ensemble_size
    params = _perturbed(variables["params"], 0, ("bias", "member_bias"))
    logits = _evaluate(model, {"params": params}, x)
    np.testing.assert_array_equal(logits, _evaluate(model, {"params": params}, x))
    renamed = {
        path[:-1] + (path[-1].removesuffix("_mean"),): value
        for path, value in traverse_util.flatten_dict(params).items()
        if not path[-1].endswith("_rho")
    }
    reference = _evaluate(ensemble, {"params": traverse_util.unflatten_dict(renamed)}, x)
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)


def test_rank1_training_samples_the_factors_from_the_dropout_rng():
    model, _, _, variables = _initialised("rank1_bnn", "mlp")
    x = np.repeat(_inputs((1, 5)), 2, axis=0)  # the same example twice
    first, _ = _train_forward(model, variables, x, jax.random.key(2))
    again, _ = _train_forward(model, variables, x, jax.random.key(2))
    other, _ = _train_forward(model, variables, x, jax.random.key(3))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other, atol=1e-3)
    # Every example draws its own factors.
    assert not np.allclose(first[0], first[1], atol=1e-3)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: model.apply(variables, x, train=True, mutable=["penalties"]))
    # With a vanishing posterior std (softplus(-40) ~ 4e-18) the samples are the means.
    flat = traverse_util.flatten_dict(variables["params"])
    flat = {path: np.full_like(v, -40.0) if path[-1].endswith("_rho") else v for path, v in flat.items()}
    sharp = {"params": traverse_util.unflatten_dict(flat)}
    sampled, _ = _train_forward(model, sharp, x, jax.random.key(2))
    np.testing.assert_allclose(sampled, _evaluate(model, sharp, x), rtol=1e-5, atol=1e-6)


def test_rank1_factor_samples_have_the_posterior_std():
    """Samples of the factors ``r`` and ``s`` spread as ``N(mean, softplus(rho)^2)``, member by member.

    One Dense layer (an MLP without hidden layers) on one input repeated over many rows: every
    row draws its own factors, so with the other side's std made vanishing each logit gives one
    sample of a factor, ``s_j = (z_j - b_j - c_j) / ((x * r) W)_j`` and, for the one-hot input
    ``e_0``, ``r_0 = (z_0 - b_0 - c_0) / (W_00 s_0)``.
    """
    model = create_model("rank1_bnn", 3, backbone="mlp", backbone_kwargs={"widths": ()}, ensemble_size=2)
    rows = 4000
    x = np.zeros((rows, 5), np.float32)
    x[:, 0] = 1.0
    _, variables = _init(model, x[:1])
    ((path, layer),) = _rank1_layers(variables["params"]).items()
    # Posterior stds between 0.15 and 0.6 (not 1, where std and std^2 agree).
    stds = np.array([[0.15, 0.3, 0.45], [0.6, 0.2, 0.35]], np.float32)
    vanishing = -40.0  # softplus(-40) ~ 4e-18
    rho = np.log(np.expm1(stds)).astype(np.float32)
    kernel, bias, offsets = (np.asarray(layer[n], np.float64) for n in ("kernel", "bias", "member_bias"))
    in_mean, out_mean = np.asarray(layer["fast_in_mean"], np.float64), np.asarray(layer["fast_out_mean"], np.float64)

    def sample_logits(in_rho: np.ndarray, out_rho: np.ndarray) -> np.ndarray:
        params = traverse_util.unflatten_dict({path: {**layer, "fast_in_rho": in_rho, "fast_out_rho": out_rho}})
        logits, _ = _train_forward(model, {"params": params}, x, jax.random.key(4))
        return np.asarray(logits, np.float64)  # [rows, members, classes]

    # s: r at its mean (vanishing in-side std).
    logits = sample_logits(np.full(in_mean.shape, vanishing, np.float32), rho)
    linear = in_mean[:, 0, None] * kernel[0]  # ((e_0 * r) W) per member: [members, classes]
    s = (logits - bias - offsets) / linear
    np.testing.assert_allclose(s.mean(0), out_mean, atol=4 * stds.max() / np.sqrt(rows))
    np.testing.assert_allclose(s.std(0), stds, rtol=0.06)  # sampling error of a std: 1 / sqrt(2 * 4000) = 1.1 %
    # r_0: s at its mean; the std of feature 0's factor, one value per member.
    in_rho = np.full(in_mean.shape, vanishing, np.float32)
    in_rho[:, 0] = rho[:, 0]
    logits = sample_logits(in_rho, np.full(out_mean.shape, vanishing, np.float32))
    r0 = (logits[:, :, 0] - bias[0] - offsets[:, 0]) / (kernel[0, 0] * out_mean[:, 0])
    np.testing.assert_allclose(r0.std(0), stds[:, 0], rtol=0.06)


def test_bad_arguments_raise_value_error():
    for name, kwargs in [
        ("batch_ensemble", {"backbone": "no_such_model"}),
        ("batch_ensemble", {"backbone": "mimo"}),
        ("rank1_bnn", {"backbone": "dual_head"}),
        ("batch_ensemble", {"ensemble_size": 0}),
        ("batch_ensemble", {"random_sign_init": 0.0}),
        ("batch_ensemble", {"random_sign_init": 1.5}),
        ("mimo", {"input_repetition": 1.5}),
        ("mimo", {"backbone_kwargs": {"num_classes": 3}}),
        ("rank1_bnn", {"prior_std": 0.0}),
        ("rank1_bnn", {"init_std": -1.0}),
    ]:
        with pytest.raises(ValueError):
            create_model(name, 10, **kwargs)
