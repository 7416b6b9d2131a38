"""The model zoo: parameter counts against the published ones, forward/backward passes of small
configurations, model state and rng conventions, bfloat16 compute, and a short training run."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sam_jax import models
from sam_jax.models import (
    MODELS,
    CifarResNet,
    PyramidNet,
    ResNet,
    VisionTransformer,
    WideResNet,
    create_model,
)
from sam_jax.models.layers import ShakeDrop
from sam_jax.training import default_config, read_metrics, train_and_evaluate
from tests.data_gates import needs_fashion_mnist

# XLA's CPU backend spends most of a small test's time optimising code that then runs once;
# without LLVM's optimisations compiling is 2-5x faster (the step below runs 20 times and keeps them).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)

# name -> (num_classes, input side, published parameter count, relative tolerance, source).
PUBLISHED = {
    "resnet20": (10, 32, 0.27e6, 0.02, "He et al. 2015, arXiv:1512.03385, Table 6"),
    "resnet32": (10, 32, 0.46e6, 0.02, "He et al. 2015, Table 6"),
    "resnet56": (10, 32, 0.85e6, 0.02, "He et al. 2015, Table 6"),
    "resnet20_frn": (10, 32, 0.27e6, 0.02, "Möllenhoff & Khan 2022, arXiv:2210.01620, App. H"),
    "wrn28_10": (10, 32, 36.5e6, 0.02, "Zagoruyko & Komodakis 2016, arXiv:1605.07146"),
    # 20 is not 6n+4; rounded down to n = 2 this is the layout of WRN-16-10 (17.1M in the WRN paper).
    "wrn20_10": (10, 32, 17.1e6, 0.02, "Zagoruyko & Komodakis 2016, WRN-16-10"),
    # The paper prints 1.7M; the authors' architecture counts 1.77M (the paper truncates), so 5 %.
    "pyramidnet110": (10, 32, 1.7e6, 0.05, "Han et al. 2016, arXiv:1610.02915, alpha = 48"),
    "resnet18": (1000, 224, 11.69e6, 0.02, "He et al. 2015 / torchvision resnet18"),
    "resnet50": (1000, 224, 25.56e6, 0.02, "He et al. 2015 / torchvision resnet50"),
    "vit_s32": (1000, 224, 22.9e6, 0.02, "Steiner et al. 2021, arXiv:2106.10270 (timm vit_small_patch32_224)"),
    "vit_s16": (1000, 224, 22.0e6, 0.02, "Touvron et al. 2021, arXiv:2012.12877 (DeiT-S = ViT-S/16)"),
    "vit_b16": (1000, 224, 86.0e6, 0.02, "Dosovitskiy et al. 2020, arXiv:2010.11929, Table 1"),
}


def _num_params(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract_variables(model: nn.Module, side: int) -> Any:
    images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


@functools.partial(fast_jit, static_argnums=0)
def _init(model: nn.Module, images: jax.Array) -> dict:
    # Jitted: an eager init dispatches (and compiles) every op on its own, several times slower.
    return model.init(jax.random.key(0), images, train=False)


@functools.partial(fast_jit, static_argnums=0)
def _evaluate(model: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False)


def _batch(side: int = 32, batch: int = 2) -> tuple[jax.Array, jax.Array]:
    images = jax.random.normal(jax.random.key(1), (batch, side, side, 3))
    return images, jnp.arange(batch) % 10


@functools.partial(fast_jit, static_argnums=0)
def _loss_and_grads(
    model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, rng: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, dict, Any]:
    """One training-mode pass as the train loop makes it: loss, logits, new model state, gradients."""
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    rngs = {"dropout": rng} if rng is not None else {}

    def loss_fn(p: Any) -> tuple[jax.Array, tuple[jax.Array, dict]]:
        state_and_params = {"params": p, **model_state}
        if model_state:
            logits, new_state = model.apply(state_and_params, images, train=True, mutable=list(model_state), rngs=rngs)
        else:
            logits, new_state = model.apply(state_and_params, images, train=True, rngs=rngs), {}
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (logits, new_state)

    (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, logits, new_state, grads


def _assert_grads_match_params(grads: Any, params: Any) -> None:
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for grad, param in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert grad.shape == param.shape and grad.dtype == param.dtype
        assert np.all(np.isfinite(grad))
    assert any(np.any(grad != 0) for grad in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
    num_classes, side, published, tolerance, _ = PUBLISHED[name]
    variables = _abstract_variables(create_model(name, num_classes), side)
    assert abs(_num_params(variables["params"]) / published - 1) < tolerance


def test_every_zoo_model_is_registered():
    assert set(PUBLISHED) <= set(MODELS)


def test_exact_counts_of_architecture_choices():
    # Option A shortcuts have no parameters; option B adds two 1x1 convolutions + BN (0.27M still).
    assert _num_params(_abstract_variables(create_model("resnet20", 10), 32)["params"]) == 269_722
    assert _num_params(_abstract_variables(create_model("resnet20", 10, shortcut="B"), 32)["params"]) == 272_474
    # FRN has gamma, beta, tau per channel where BN has scale, bias: +688 over ResNet-20.
    assert _num_params(_abstract_variables(create_model("resnet20_frn", 10), 32)["params"]) == 270_410
    # torchvision's counts; the 3x3 stem for CIFAR gives the familiar 11.17M ResNet-18.
    assert _num_params(_abstract_variables(create_model("resnet18", 1000), 224)["params"]) == 11_689_512
    assert _num_params(_abstract_variables(create_model("resnet50", 1000), 224)["params"]) == 25_557_032
    assert _num_params(_abstract_variables(create_model("resnet18", 10, stem="cifar"), 32)["params"]) == 11_173_962


def test_bad_configurations_raise_value_error():
    for name, kwargs in [
        ("resnet20", {"depth": 21}),
        ("resnet20", {"shortcut": "C"}),
        ("resnet20", {"normalization": "layer"}),
        ("wrn28_10", {"depth": 4}),
        ("pyramidnet110", {"depth": 100}),
        ("resnet18", {"stem": "tiny"}),
        ("vit_s16", {"no_such_field": 1}),
    ]:
        with pytest.raises(ValueError):
            create_model(name, 10, **kwargs)


def test_resnet20_forward_backward_updates_batch_stats():
    model = create_model("resnet20", 10)
    images, labels = _batch()
    variables = _init(model, images)
    assert set(variables) == {"params", "batch_stats"}
    loss, logits, new_state, grads = _loss_and_grads(model, variables, images, labels)
    assert logits.shape == (2, 10) and np.isfinite(loss)
    _assert_grads_match_params(grads, variables["params"])
    assert jax.tree.structure(new_state["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    changed = [
        not np.allclose(new, old)
        for new, old in zip(jax.tree.leaves(new_state["batch_stats"]), jax.tree.leaves(variables["batch_stats"]))
    ]
    assert all(changed)
    # Evaluation uses the running averages: deterministic, and no rng needed.
    np.testing.assert_array_equal(_evaluate(model, variables, images), _evaluate(model, variables, images))


def test_resnet20_frn_is_stateless_and_batch_independent():
    model = create_model("resnet20_frn", 10)
    images, labels = _batch()
    variables = _init(model, images)
    assert set(variables) == {"params"}
    _, logits, _, grads = _loss_and_grads(model, variables, images, labels)
    _assert_grads_match_params(grads, variables["params"])
    # No batch statistics: an example's logits depend neither on `train` nor on the rest of the batch.
    other_batch = images.at[1].set(10.0 * images[1] + 3.0)
    np.testing.assert_allclose(_evaluate(model, variables, images), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_evaluate(model, variables, other_batch)[0], logits[0], rtol=1e-5, atol=1e-5)


def _assert_dropout_uses_rng(model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array) -> None:
    """Training needs the "dropout" rng and depends on it; evaluation is deterministic without it."""
    grads = [
        jax.tree.leaves(_loss_and_grads(model, variables, images, labels, jax.random.key(seed))[3])
        for seed in (0, 0, 1)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(grads[0], grads[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(grads[0], grads[2]))
    with pytest.raises(Exception, match="dropout"):
        _loss_and_grads(model, variables, images, labels)
    np.testing.assert_array_equal(_evaluate(model, variables, images), _evaluate(model, variables, images))


def test_small_wide_resnet_with_dropout():
    model = WideResNet(num_classes=10, depth=10, widen_factor=2, dropout_rate=0.3)
    images, labels = _batch()
    variables = _init(model, images)
    loss, logits, new_state, grads = _loss_and_grads(model, variables, images, labels, jax.random.key(0))
    assert logits.shape == (2, 10) and set(new_state) == {"batch_stats"}
    _assert_grads_match_params(grads, variables["params"])
    _assert_dropout_uses_rng(model, variables, images, labels)


def test_small_pyramidnet_with_shakedrop():
    model = PyramidNet(num_classes=10, depth=8, alpha=12, shakedrop=True)
    images, labels = _batch()
    variables = _init(model, images)
    _, logits, _, grads = _loss_and_grads(model, variables, images, labels, jax.random.key(0))
    assert logits.shape == (2, 10)
    _assert_grads_match_params(grads, variables["params"])
    _assert_dropout_uses_rng(model, variables, images, labels)
    widths = [variables["params"][f"PyramidBasicBlock_{i}"]["Conv_1"]["kernel"].shape[-1] for i in range(3)]
    assert widths == [20, 24, 28]  # 16 + alpha * l / 3


def test_shakedrop_scales_forward_and_backward_separately():
    branch = jnp.full((512, 1, 1, 1), 3.0)
    layer = ShakeDrop(survival=0.75)

    @fast_jit
    def forward_and_backward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        y, vjp = jax.vjp(lambda z: layer.apply({}, z, train=True, rngs={"dropout": jax.random.key(7)}), x)
        return y, vjp(jnp.ones_like(y))[0]

    forward, backward = (np.asarray(out).ravel() for out in forward_and_backward(branch))
    forward = forward / 3.0
    kept = (forward == 1.0) & (backward == 1.0)
    assert abs(kept.mean() - 0.75) < 0.07
    assert np.all((forward[~kept] >= -1) & (forward[~kept] <= 1) & (backward[~kept] >= 0) & (backward[~kept] <= 1))
    assert np.std(forward[~kept]) > 0.3  # alpha ~ U[-1, 1] per example
    np.testing.assert_allclose(layer.apply({}, branch, train=False), 0.75 * branch)


def test_small_vit_forward_backward_and_dropout():
    model = VisionTransformer(
        num_classes=10, patch_size=8, hidden_size=32, depth=2, num_heads=2, mlp_dim=64, dropout_rate=0.1
    )
    images, labels = _batch()
    variables = _init(model, images)
    assert variables["params"]["position_embedding"].shape == (1, 17, 32)  # 4x4 patches + class token
    _, logits, _, grads = _loss_and_grads(model, variables, images, labels, jax.random.key(0))
    assert logits.shape == (2, 10)
    _assert_grads_match_params(grads, variables["params"])
    _assert_dropout_uses_rng(model, variables, images, labels)


@pytest.mark.parametrize("stem,bottleneck,side", [("imagenet", True, 64), ("cifar", False, 32)])
def test_small_resnet_stems(stem, bottleneck, side):
    model = ResNet(num_classes=10, stage_sizes=(1, 1), bottleneck=bottleneck, stem=stem, width=8)
    images, labels = _batch(side)
    variables = _init(model, images)
    _, logits, new_state, grads = _loss_and_grads(model, variables, images, labels)
    assert logits.shape == (2, 10) and set(new_state) == {"batch_stats"}
    _assert_grads_match_params(grads, variables["params"])


@pytest.mark.parametrize(
    "model",
    [
        CifarResNet(num_classes=10, depth=8, dtype=jnp.bfloat16),
        VisionTransformer(
            num_classes=10, patch_size=8, hidden_size=32, depth=1, num_heads=2, mlp_dim=64, dtype=jnp.bfloat16
        ),
    ],
    ids=["resnet8", "vit_tiny"],
)
def test_bfloat16_compute_with_float32_params_and_logits(model):
    images, _ = _batch()
    variables = _init(model, images)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    # Gradients take the dtype of the float32 parameters, so a training-mode forward pass is enough.
    logits, state = fast_jit(functools.partial(model.apply, train=True, capture_intermediates=True, mutable=True))(
        variables, images
    )
    assert logits.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.get("batch_stats", {})))
    outputs = {
        tuple(key.key for key in path[:-2]): value  # path: module names, "__call__", index
        for path, value in jax.tree_util.tree_leaves_with_path(state["intermediates"])
    }
    layers = [value for path, value in outputs.items() if path and path[-1].startswith(("Conv", "Dense", "patch"))]
    assert layers and all(value.dtype == jnp.bfloat16 for value in layers)
    assert outputs[("head",)].dtype == jnp.float32


@needs_fashion_mnist
@pytest.mark.slow  # threshold training; the forward/backward tests above and the pad_to data tests pin its parts
def test_resnet20_trains_on_fashion_mnist_padded_to_32x32(tmp_path):
    """The CIFAR ResNet-20 learns real data through the loop: Fashion-MNIST padded to 32x32 (data.pad_to)."""
    config = default_config()
    config.workdir = str(tmp_path)
    config.model.name = "resnet20"
    config.data.update({"pad_to": 32, "train_size": 256, "val_size": 128, "test_size": 128})
    config.optimizer.learning_rate = 0.05
    config.optimizer.schedule = "constant"
    config.batch_size = 32
    config.num_steps = 24  # three passes over the 256 examples
    config.eval_at_start = False
    config.eval_every_steps = 24
    config.eval_train_size = 256
    config.log_every_steps = 4
    config.progress_bar = False
    summary = train_and_evaluate(config)
    losses = [r["train_step/loss"] for r in read_metrics(str(tmp_path)) if "train_step/loss" in r]
    assert summary["num_train"] == 256 and summary["num_test"] == 128
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    # Evaluation uses BatchNorm's running statistics, still far from the batch ones after 24 steps.
    assert summary["train/accuracy"] >= 0.2  # twice chance


def test_dual_head_stacks_a_linear_and_a_fixed_etf_head():
    model = models.create_model(
        "dual_head", 5, backbone="mlp", backbone_kwargs={"widths": (16,), "activation": "tanh"}, feature_dim=8
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 1))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    logits = model.apply(variables, x)
    assert logits.shape == (3, 2, 5)
    assert set(variables["params"]) == {"linear_head", "MLP_0"}  # the ETF head has no parameters
    features = models.MLP(num_classes=8, widths=(16,), activation="tanh").apply(
        {"params": variables["params"]["MLP_0"]}, x
    )
    unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
    etf = np.asarray(models.simplex_etf(jax.random.PRNGKey(0), 8, 5))
    np.testing.assert_allclose(logits[:, 1], unit @ etf, rtol=1e-5, atol=1e-6)
