"""Möllenhoff & Khan (2022, arXiv:2210.01620), Table 1 (no data augmentation): the grid presets.

    python -m experiments.bsam_table1 --config=experiments/configs/bsam_table1.py:quick

Presets: ``quick`` (smoke test: every method, a few steps on a subset of Fashion-MNIST), ``fmnist``
(the committed CPU run: Fashion-MNIST / LeNet-5 with 10 epochs instead of 120, 3 seeds),
``fmnist_paper`` (120 epochs, 5 seeds as in Table 1), ``mnist`` (MLP 784-500-300, 75 epochs),
``cifar10`` and ``cifar100`` (ResNet-20-FRN, 180 epochs, learning rate x0.1 at epochs 100 and 120);
the last three need their dataset's files (``sam_jax.data``'s resolution order).

The protocol of Sec. 5 and App. H: the whole training split (no validation split, no
augmentation), batch 128, cosine decay of the learning rate to zero (step decay for CIFAR), the
test set for every metric. Table 6 gives each method's alpha (learning rate), beta1, N*delta (the
L2 term delta = N*delta / N, added to the gradient as the authors' code does), rho, beta2 and gamma.
SAM-SGD, SAM-Adam and bSAM split every batch into 8 sub-batches of 16 with their own perturbation
(and, for bSAM, their own weight noise): ``m = 16`` examples per sub-batch here. bSAM's beta2 = 0.999
and damping gamma = 0.1 on every dataset (Algorithm 1; the authors' train script defaults to
``--damping 0.1`` and none of their documented commands changes it): the gamma column of Table 6
(0.05 for MNIST and Fashion-MNIST, 0.01 for CIFAR) and its beta2 column (0.999 / 0.99) belong to
VOGN, the other method with a damping; Table 7, which has no VOGN row, has no numeric gamma or
beta2. ``bsam_gamma_ablation`` runs bSAM with that VOGN value, a labelled ablation row (the value
earlier versions of these presets read, wrongly, as bSAM's). Adam's beta2 = 0.999 (fixed across
datasets). VOGN (Osawa et al. 2019, arXiv:1906.02506) takes Table 6's VOGN row with 16 sub-batches
of 8 examples, each with its own weight sample (``vogn.m = 8``). SWAG (Maddox et al. 2019,
arXiv:1902.02476) runs SGD with Table 6's SGD row for App. H's epochs, then collects for 15 epochs
at App. H's constant rate (rank 20, a snapshot every 100 steps). bSAM, VOGN and SWAG predict with
32 posterior samples. The networks have K outputs, where the paper's have K - 1 (a minimal
exponential-family parameterisation, App. H).
"""

import ml_collections

from sam_jax.training import default_config

PRESETS = ("quick", "fmnist", "fmnist_paper", "mnist", "cifar10", "cifar100")

SUB_BATCH = 16  # 128 / 8: the paper's m = 8 sub-batches per batch.
TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}
# Table 6 per setting: method -> (alpha, beta1, N*delta, rho); bSAM's gamma per setting.
TABLE6 = {
    "mnist": {
        "sgd": (0.1, 0.95, 24, None),
        "adam": (0.0005, 0.8, 24, None),
        "sam_sgd": (0.1, 0.95, 30, 0.05),
        "sam_adam": (0.0005, 0.8, 24, 0.02),
        "bsam": (0.1, 0.8, 15, 0.01),
    },
    "fashion_mnist": {
        "sgd": (0.01, 0.8, 60, None),
        "adam": (0.001, 0.9, 60, None),
        "sam_sgd": (0.05, 0.8, 60, 0.05),
        "sam_adam": (0.001, 0.9, 60, 0.02),
        "bsam": (0.1, 0.95, 50, 0.002),
    },
    "cifar10": {
        "sgd": (0.1, 0.9, 25, None),
        "adam": (0.001, 0.9, 250, None),
        "sam_sgd": (0.05, 0.9, 25, 0.05),
        "sam_adam": (0.0003, 0.9, 25, 0.1),
        "bsam": (0.1, 0.9, 25, 0.001),
    },
    "cifar100": {
        "sgd": (0.1, 0.9, 30, None),
        "adam": (0.001, 0.9, 250, None),
        "sam_sgd": (0.05, 0.9, 25, 0.05),
        "sam_adam": (0.0003, 0.9, 25, 0.1),
        "bsam": (0.1, 0.9, 25, 0.001),
    },
}
# bSAM's damping gamma: 0.1 on every dataset (Algorithm 1).
BSAM_DAMPING = 0.1
# Table 6's gamma column, VOGN's damping; bSAM with it is the ``bsam_gamma_ablation`` row.
VOGN_DAMPING = {"mnist": 0.05, "fashion_mnist": 0.05, "cifar10": 0.01, "cifar100": 0.01}
# VOGN's row of Table 6 per setting: (alpha, beta1, N*delta, beta2); its damping is VOGN_DAMPING.
VOGN_TABLE6 = {
    "mnist": (0.0005, 0.95, 25, 0.999),
    "fashion_mnist": (0.0001, 0.95, 25, 0.99),
    "cifar10": (0.001, 0.9, 25, 0.999),
    "cifar100": (0.001, 0.9, 25, 0.999),
}
VOGN_SUB_BATCH = 8  # 128 / 16: "for VOGN we set m = 16" sub-batches with their own weight sample (App. H).
# SWAG (App. H): epochs of SGD (Table 6's SGD row; the cosine anneals to 0 at their end, the step
# schedule of CIFAR keeps its boundaries at epochs 100 and 120), then epochs of collection at a
# constant alpha with momentum beta1; rank 20, a snapshot every 100 steps.
SWAG_SCHEDULE = {
    "mnist": (60, 15, 0.01, 0.95),
    "fashion_mnist": (105, 15, 0.001, 0.8),
    "cifar10": (165, 15, 0.0001, 0.9),
    "cifar100": (165, 15, 0.0001, 0.9),
}
SWAG_RANK, SWAG_COLLECT_EVERY = 20, 100
# IVON (Shen et al. 2024, arXiv:2402.17641), a row beside bSAM that is not in the paper's table: the
# authors' ivon package defaults (h0 = 1, beta1 = 0.9, beta2 = 0.99999, no clipping, one weight sample
# per step), ess = N, and bSAM's learning rate and prior precision N*delta of Table 6; not tuned.
IVON_DEFAULTS = {"hess_init": 1.0, "beta1": 0.9, "beta2": 0.99999, "ess": 0.0, "clip_radius": 0.0}
# Labels of ablation rows (not in the paper's table); the smoke preset leaves them out.
ABLATIONS = ("bsam_gamma_ablation",)
MODELS = {
    "mnist": ("mlp", {"widths": (500, 300), "activation": "relu"}),
    "fashion_mnist": ("lenet5", {}),
    "cifar10": ("resnet20_frn", {}),
    "cifar100": ("resnet20_frn", {}),
}
EPOCHS = {"mnist": 75, "fashion_mnist": 120, "cifar10": 180, "cifar100": 180}


def _row(accuracy, nll, ece, auroc):
    return {"accuracy": accuracy, "nll": nll, "ece": ece, "auroc": auroc}


# The paper's Table 1: mean (std) over 5 seeds at the budget of EPOCHS.
PAPER_TABLE1 = {
    "mnist": {
        "sgd": _row((98.63, 0.06), (0.044, 0.0012), (0.0028, 0.0007), (0.979, 0.002)),
        "sam_sgd": _row((98.82, 0.03), (0.039, 0.0005), (0.0031, 0.0002), (0.978, 0.003)),
        "swag": _row((98.65, 0.04), (0.044, 0.0002), (0.0028, 0.0005), (0.976, 0.003)),
        "vogn": _row((98.54, 0.03), (0.046, 0.0008), (0.0033, 0.0007), (0.980, 0.002)),
        "adam": _row((98.41, 0.06), (0.050, 0.0012), (0.0036, 0.0007), (0.979, 0.002)),
        "sam_adam": _row((98.58, 0.03), (0.046, 0.0009), (0.0044, 0.0005), (0.980, 0.002)),
        "bsam": _row((98.78, 0.06), (0.038, 0.0011), (0.0024, 0.0004), (0.982, 0.001)),
    },
    "fashion_mnist": {
        "sgd": _row((91.37, 0.27), (0.32, 0.007), (0.0429, 0.0015), (0.897, 0.004)),
        "sam_sgd": _row((91.95, 0.17), (0.22, 0.004), (0.0062, 0.0007), (0.917, 0.002)),
        "swag": _row((91.38, 0.27), (0.31, 0.005), (0.0397, 0.0026), (0.901, 0.005)),
        "vogn": _row((91.24, 0.25), (0.24, 0.004), (0.0071, 0.0012), (0.916, 0.002)),
        "adam": _row((91.14, 0.25), (0.33, 0.005), (0.0450, 0.0008), (0.897, 0.005)),
        "sam_adam": _row((91.66, 0.19), (0.25, 0.004), (0.0225, 0.0026), (0.913, 0.002)),
        "bsam": _row((92.10, 0.26), (0.22, 0.005), (0.0066, 0.0022), (0.920, 0.002)),
    },
    "cifar10": {
        "sgd": _row((86.55, 0.35), (0.56, 0.014), (0.0839, 0.003), (0.878, 0.005)),
        "sam_sgd": _row((87.49, 0.26), (0.49, 0.019), (0.0710, 0.003), (0.891, 0.004)),
        "swag": _row((86.80, 0.10), (0.53, 0.017), (0.0774, 0.001), (0.880, 0.006)),
        "vogn": _row((87.30, 0.24), (0.38, 0.004), (0.0315, 0.003), (0.890, 0.003)),
        "adam": _row((80.85, 0.98), (0.83, 0.063), (0.1317, 0.011), (0.820, 0.013)),
        "sam_adam": _row((85.26, 0.15), (0.46, 0.007), (0.0228, 0.002), (0.874, 0.004)),
        "bsam": _row((88.72, 0.24), (0.34, 0.005), (0.0163, 0.002), (0.903, 0.003)),
    },
    "cifar100": {
        "sgd": _row((55.82, 0.97), (1.91, 0.025), (0.1695, 0.005), (0.811, 0.004)),
        "sam_sgd": _row((58.58, 0.59), (1.60, 0.022), (0.0989, 0.005), (0.827, 0.003)),
        "swag": _row((56.53, 0.40), (1.86, 0.018), (0.1604, 0.004), (0.814, 0.004)),
        "vogn": _row((59.83, 0.75), (1.44, 0.019), (0.0756, 0.005), (0.830, 0.002)),
        "adam": _row((39.73, 0.97), (2.29, 0.045), (0.0295, 0.018), (0.775, 0.004)),
        "sam_adam": _row((53.25, 0.80), (1.71, 0.035), (0.0401, 0.005), (0.818, 0.005)),
        "bsam": _row((62.64, 0.33), (1.32, 0.001), (0.0311, 0.003), (0.841, 0.004)),
    },
}


def table6_overrides(dataset: str) -> dict[str, tuple[str, float, dict]]:
    """Method label -> (optimizer name, learning rate, ``optimizer`` block overrides) of Table 6.

    ``bsam_gamma_ablation`` is bSAM with Table 6's gamma column (VOGN's damping) instead of its own
    0.1: an ablation, not a row of the paper; ``ivon`` (IVON at bSAM's alpha and N*delta) is not a row
    of the paper either.
    """
    decay = {label: n_delta / TRAIN_SIZES[dataset] for label, (_, _, n_delta, _) in TABLE6[dataset].items()}
    rows = TABLE6[dataset]
    sgd = lambda label: {"momentum": rows[label][1], "weight_decay": decay[label]}
    adam = lambda label: {"b1": rows[label][1], "b2": 0.999, "weight_decay": decay[label]}
    alpha_s, beta_s, n_delta_s, rho_s = rows["bsam"]
    bsam = lambda damping: {
        "bsam": {
            "rho": rho_s,
            "beta1": beta_s,
            "beta2": 0.999,
            "prior_precision": float(n_delta_s),
            "damping": damping,
            "init_precision": 1.0,
            "m": SUB_BATCH,
        }
    }
    _, beta_v, n_delta_v, beta2_v = VOGN_TABLE6[dataset]
    vogn = {
        "vogn": {
            "beta1": beta_v,
            "beta2": beta2_v,
            "prior_precision": float(n_delta_v),
            "damping": VOGN_DAMPING[dataset],
            "init_precision": 1.0,
            "m": VOGN_SUB_BATCH,
        }
    }
    return {
        "sgd": ("sgd", rows["sgd"][0], {"sgd": sgd("sgd")}),
        "adam": ("adam", rows["adam"][0], {"adam": adam("adam")}),
        "sam_sgd": (
            "sam",
            rows["sam_sgd"][0],
            {"sam": {"rho": rows["sam_sgd"][3], "m": SUB_BATCH, "base": "sgd"}, "sgd": sgd("sam_sgd")},
        ),
        "sam_adam": (
            "sam",
            rows["sam_adam"][0],
            {"sam": {"rho": rows["sam_adam"][3], "m": SUB_BATCH, "base": "adam"}, "adam": adam("sam_adam")},
        ),
        "vogn": ("vogn", VOGN_TABLE6[dataset][0], vogn),
        "bsam": ("bsam", alpha_s, bsam(BSAM_DAMPING)),
        "bsam_gamma_ablation": ("bsam", alpha_s, bsam(VOGN_DAMPING[dataset])),
        "ivon": ("ivon", alpha_s, {"ivon": {**IVON_DEFAULTS, "weight_decay": n_delta_s / TRAIN_SIZES[dataset]}}),
    }


def swag_overrides(dataset: str, total_steps: int, **swag_fields: int) -> tuple[str, float, dict]:
    """SWAG's (optimizer name, learning rate, ``optimizer`` overrides) over a run of ``total_steps``.

    SGD with Table 6's SGD row for the first ``sgd / (sgd + collect)`` of the run (App. H's epochs),
    then SWAG's collection; ``swag_fields`` override the ``swag`` block (the smoke preset's).

    Raises:
      ValueError: when App. H's collection momentum is not SGD's (the base optimizer keeps its own).
    """
    sgd_epochs, collect_epochs, collect_alpha, collect_beta1 = SWAG_SCHEDULE[dataset]
    alpha, beta1, n_delta, _ = TABLE6[dataset]["sgd"]
    if collect_beta1 != beta1:
        raise ValueError(f"SWAG's collection beta1 {collect_beta1} differs from SGD's {beta1} ({dataset}).")
    start = round(total_steps * sgd_epochs / (sgd_epochs + collect_epochs))
    block = {
        "base": "sgd",
        "start_step": start,
        "collect_learning_rate": collect_alpha,
        "collect_every": SWAG_COLLECT_EVERY,
        "rank": SWAG_RANK,
        **swag_fields,
    }
    overrides = {
        "swag": block,
        "sgd": {"momentum": beta1, "weight_decay": n_delta / TRAIN_SIZES[dataset]},
        # The cosine of the SGD phase anneals to 0 at its end; the step schedule keeps its epochs.
        "decay_steps": 0 if dataset.startswith("cifar") else block["start_step"],
    }
    return "swag", alpha, overrides


def _grid(
    dataset: str, seeds: tuple[int, ...], total_steps: int, ablation: bool = True, **swag_fields: int
) -> ml_collections.ConfigDict:
    grid = ml_collections.ConfigDict()
    grid.seeds = seeds
    methods = table6_overrides(dataset)
    methods["swag"] = swag_overrides(dataset, total_steps, **swag_fields)
    grid.optimizers = ml_collections.ConfigDict(
        {
            label: {"optimizer": name, "learning_rates": (learning_rate,), "overrides": {"optimizer": overrides}}
            for label, (name, learning_rate, overrides) in methods.items()
            if ablation or label not in ABLATIONS
        }
    )
    return grid


def get_config(preset: str = "quick") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    dataset = {"mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100"}.get(preset, "fashion_mnist")
    config = default_config()
    config.workdir = f"runs/bsam_table1_{preset}"
    config.data.name = dataset
    config.data.val_size = 0  # the paper trains on the whole training split and reports on the test set
    model, kwargs = MODELS[dataset]
    config.model.name = model
    config.model.kwargs = ml_collections.ConfigDict(kwargs)
    config.optimizer.schedule = "cosine"
    config.batch_size = 128
    config.num_bins = 20  # the paper's ECE uses 20 bins
    config.eval_train_size = 5000
    config.checkpoint_every_steps = 2000
    steps_per_epoch = TRAIN_SIZES[dataset] // config.batch_size
    config.num_epochs = EPOCHS[dataset]
    config.eval_every_steps = 10 * steps_per_epoch
    config.grid = _grid(dataset, (0, 1, 2, 3, 4), config.num_epochs * steps_per_epoch)
    if dataset.startswith("cifar"):
        config.optimizer.schedule = "step"
        config.optimizer.step_boundaries = (100 / 180, 120 / 180)
        config.optimizer.step_factor = 0.1
    # The report's evaluation (not part of a run's config, so changing it never touches a run).
    config.table1 = ml_collections.ConfigDict()
    config.table1.posterior_samples = 32  # bSAM's predictive: the average of 32 posterior samples (Sec. 5)
    config.table1.sample_counts = (1, 2, 4, 8, 16, 32)  # the posterior-sample curve
    config.table1.seed = 0  # PRNG seed of the posterior samples
    if preset == "quick":
        config.data.train_size = 1024
        config.data.test_size = 1000
        config.num_steps = 8
        config.eval_every_steps = 8
        config.eval_at_start = False
        config.eval_train_size = 256
        config.table1.posterior_samples = 2
        config.table1.sample_counts = (1, 2)
        config.progress_bar = False
        # SWAG collects after every one of the last 4 steps, rank 3.
        config.grid = _grid(dataset, (0,), config.num_steps, ablation=False, start_step=4, collect_every=1, rank=3)
    elif preset == "fmnist":
        config.num_epochs = 10
        config.eval_every_steps = 2 * steps_per_epoch
        config.grid = _grid(dataset, (0, 1, 2), config.num_epochs * steps_per_epoch)
    return config
