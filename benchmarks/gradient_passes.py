"""Gradient passes per training step of every registered optimizer, counted in the jitted train step.

Each optimizer is built from the registry with its default block (base ``sgd`` for the SAM family)
and run for ``--steps`` steps of the loop's train step (``sam_jax.training.steps.make_train_step``)
on a tiny MLP. Its ``grad_fn`` is wrapped so that every *executed* call reports to the host
(``jax.debug.callback``; a call in a ``lax.cond`` branch not taken does not report). A step's
gradient passes are those calls plus the clean gradient the step takes when the spec's
``uses_clean_gradient`` is set; the table gives their mean per step. BulkSGD's Hessian-vector
products (``num_iters`` per step, on the linearised ``grad_fn``) are not gradient passes and are
listed apart.

    python -m benchmarks.gradient_passes [--steps 10]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sam_jax import optim
from sam_jax.losses import get_stateful_loss
from sam_jax.models import create_model
from sam_jax.training.build import optimizer_step_options
from sam_jax.training.state import TrainState
from sam_jax.training.steps import make_train_step

NUM_TRAIN, BATCH_SIZE, NUM_FEATURES, NUM_CLASSES = 64, 16, 6, 3


def counting_grad_fn(tx: optax.GradientTransformationExtraArgs, calls: list) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose ``grad_fn`` appends to ``calls`` each time one of its calls is executed."""

    def update(grads, state, params=None, *, grad_fn=None, **extra_args):
        def counted(p):
            jax.debug.callback(lambda: calls.append(1))
            return grad_fn(p)

        return tx.update(grads, state, params, grad_fn=counted, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update)


def gradient_passes(name: str, num_steps: int) -> float:
    """Mean gradient passes per step of optimizer ``name`` with its default hyper-parameters."""
    spec = optim.get_optimizer_spec(name)
    blocks = optim.hparam_blocks({})
    context = optim.BuildContext(optax.constant_schedule(0.05), NUM_TRAIN, 0, blocks, BATCH_SIZE, total_steps=num_steps)
    calls: list = []
    tx = counting_grad_fn(optim.build_optimizer(name, context), calls)
    model = create_model("mlp", NUM_CLASSES, widths=(8,))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(BATCH_SIZE, NUM_FEATURES)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, BATCH_SIZE)),
        "index": jnp.arange(BATCH_SIZE),
    }
    params = model.init(jax.random.PRNGKey(0), batch["image"][:1])["params"]
    step = jax.jit(
        make_train_step(
            model,
            tx,
            get_stateful_loss("cross_entropy"),
            **optimizer_step_options(spec, blocks[name], "cross_entropy", {}, BATCH_SIZE),
            num_train=NUM_TRAIN,
        )
    )
    state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), jax.random.PRNGKey(1), ())
    for _ in range(num_steps):
        state, _ = step(state, batch)
    jax.effects_barrier()
    return len(calls) / num_steps + (1 if spec.uses_clean_gradient else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"default blocks, base sgd, mean over {args.steps} steps of the jitted train step")
    print()
    print("| optimizer | gradient passes per step |")
    print("|---|---:|")
    for name in sorted(optim.OPTIMIZERS):
        extra = ""
        if name == "bulk_sgd":
            extra = f" + {optim.hparam_blocks({})[name]['num_iters']} Hessian-vector products"
        print(f"| {name} | {gradient_passes(name, args.steps):g}{extra} |")


if __name__ == "__main__":
    main()
