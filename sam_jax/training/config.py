"""Run configuration: the defaults every experiment starts from, and their validation.

A run is described by one ``ml_collections.ConfigDict``; experiment configs
(``experiments/configs/*.py``) import :func:`default_config` and change a few fields, and the command
line overrides any field with ``--config.<field>=<value>``. :func:`validate_config` rejects bad
values at start, with one message that says which field is wrong and what is allowed.
"""
from typing import Optional

import ml_collections

from sam_jax.curvature.tracking import default_curvature_config, validate_curvature_config
from sam_jax.data import DATASETS
from sam_jax.losses import LOSSES
from sam_jax.models import MODELS

OPTIMIZERS = ("sgd", "adamw", "gd", "sam", "asam", "ssam", "csam", "bsam", "muon", "bulk_sgd")
SAM_FAMILY = ("sam", "asam", "ssam", "csam")
SAM_BASES = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


def default_config() -> ml_collections.ConfigDict:
    """LeNet-5 on Fashion-MNIST with SGD; every field a run reads is defined here."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.workdir = "runs/default"

    config.data = ml_collections.ConfigDict()
    config.data.name = "fashion_mnist"
    config.data.data_dir = ""  # "" = resolution order of sam_jax.data (SAM_JAX_DATA_DIR, TFDS, Debian)
    config.data.train_size = 0  # examples kept for training (0 = all that remain after validation)
    config.data.val_size = 5000  # held out from the train split (temperature scaling, validation metrics)
    config.data.split_seed = 0  # seeds the permutation that picks the train subset and validation split
    config.data.normalize = True  # per-channel standardisation with train-split statistics

    config.model = ml_collections.ConfigDict()
    config.model.name = "lenet5"
    config.model.kwargs = ml_collections.ConfigDict()  # passed to the model constructor

    config.loss = "cross_entropy"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.schedule = "cosine"  # constant | cosine (to 0 at the last step) | step
    config.optimizer.warmup_steps = 0
    config.optimizer.step_boundaries = (0.5, 0.75)  # "step" schedule: fractions of training
    config.optimizer.step_factor = 0.1  # "step" schedule: multiplier at each boundary
    config.optimizer.momentum = 0.9  # sgd and SAM's sgd base; gd ignores it
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 0.0
    config.optimizer.b1 = 0.9  # adam(w), bsam beta1
    config.optimizer.b2 = 0.999  # adam(w), bsam beta2
    config.optimizer.eps = 1e-8
    config.optimizer.base = "sgd"  # SAM family: sgd | adam | adamw
    config.optimizer.rho = 0.05  # SAM family and bsam
    config.optimizer.eta = 0.01  # asam
    config.optimizer.m = 0  # m-sharpness: examples per perturbation (0 = the whole batch)
    config.optimizer.gamma = 1.0  # csam, eq. (4)
    config.optimizer.prior_precision = 0.0  # bsam delta; 0 = weight_decay * num_data
    config.optimizer.damping = 0.1  # bsam gamma
    config.optimizer.init_precision = 1.0  # bsam s_0
    config.optimizer.bulk_k = 1  # bulk_sgd: top-k Hessian directions removed
    config.optimizer.bulk_num_iters = 20  # bulk_sgd: Lanczos iterations per step

    config.batch_size = 128
    config.num_epochs = 5
    config.num_steps = 0  # > 0 overrides num_epochs

    config.eval_every_steps = 0  # 0 = at the end of every epoch
    config.eval_at_start = True  # evaluation, curvature and user hooks also run on the initial parameters
    config.eval_batch_size = 1000
    config.eval_train_size = 5000  # train examples in the train-set evaluation (0 = all)
    config.num_bins = 15  # calibration bins
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.resume = True  # continue the run in workdir when its saved config matches (else an error)
    config.overwrite = False  # delete the run in workdir and start afresh (the only way to delete one)
    config.progress_bar = True

    config.curvature = default_curvature_config()
    return config


def validate_config(config: ml_collections.ConfigDict, num_train: Optional[int] = None) -> None:
    """Raises one ``ValueError`` naming the bad field and the allowed values.

    Args:
      config: a run config (as from :func:`default_config`, after overrides).
      num_train: training examples, when known, to check the batch size against.
    """
    def fail(message: str) -> None:
        raise ValueError(f"Bad config: {message}")

    opt = config.optimizer
    if config.data.name not in DATASETS:
        fail(f"data.name={config.data.name!r}; choose one of {sorted(DATASETS)}.")
    if config.model.name not in MODELS:
        fail(f"model.name={config.model.name!r}; choose one of {sorted(MODELS)}.")
    if config.loss not in LOSSES:
        fail(f"loss={config.loss!r}; choose one of {sorted(LOSSES)}.")
    if opt.name not in OPTIMIZERS:
        fail(f"optimizer.name={opt.name!r}; choose one of {list(OPTIMIZERS)}.")
    if opt.schedule not in SCHEDULES:
        fail(f"optimizer.schedule={opt.schedule!r}; choose one of {list(SCHEDULES)}.")
    if opt.name in SAM_FAMILY and opt.base not in SAM_BASES:
        fail(f"optimizer.base={opt.base!r}; choose one of {list(SAM_BASES)}.")
    for field in ("learning_rate", "weight_decay", "rho", "eta", "warmup_steps", "damping", "prior_precision"):
        if opt[field] < 0:
            fail(f"optimizer.{field}={opt[field]} must be >= 0.")
    if opt.learning_rate == 0:
        fail("optimizer.learning_rate must be > 0.")
    if not 0 <= opt.momentum < 1:
        fail(f"optimizer.momentum={opt.momentum} must be in [0, 1).")
    if opt.init_precision <= 0:
        fail(f"optimizer.init_precision={opt.init_precision} must be > 0.")
    if opt.name == "csam" and not 0 <= opt.gamma <= 2:
        fail(f"optimizer.gamma={opt.gamma} must be in [0, 2] (eq. 4).")
    if opt.m < 0:
        fail(f"optimizer.m={opt.m} must be >= 0 (0 = whole batch).")
    if opt.m and opt.name not in SAM_FAMILY:
        fail(f"optimizer.m={opt.m} (m-sharpness) needs a SAM-family optimizer, not {opt.name!r}.")
    if opt.m and opt.name != "gd" and config.batch_size % opt.m:
        fail(f"optimizer.m={opt.m} must divide batch_size={config.batch_size}.")
    if opt.name == "bulk_sgd" and opt.bulk_k >= opt.bulk_num_iters:
        fail(f"optimizer.bulk_k={opt.bulk_k} must be < optimizer.bulk_num_iters={opt.bulk_num_iters}.")
    if any(not 0 < b < 1 for b in opt.step_boundaries):
        fail(f"optimizer.step_boundaries={opt.step_boundaries} must be fractions in (0, 1).")
    if config.batch_size <= 0 and opt.name != "gd":
        fail(f"batch_size={config.batch_size} must be > 0.")
    if num_train is not None and opt.name != "gd" and config.batch_size > num_train:
        fail(f"batch_size={config.batch_size} is larger than the training set ({num_train} examples).")
    if config.num_epochs <= 0 and config.num_steps <= 0:
        fail("set num_epochs > 0 or num_steps > 0.")
    if config.data.val_size < 0 or config.data.train_size < 0:
        fail("data.train_size and data.val_size must be >= 0.")
    for field in ("eval_batch_size", "log_every_steps", "checkpoint_every_steps", "num_bins"):
        if config[field] <= 0:
            fail(f"{field}={config[field]} must be > 0.")
    if config.eval_every_steps < 0 or config.eval_train_size < 0:
        fail("eval_every_steps and eval_train_size must be >= 0.")
    try:
        validate_curvature_config(config.curvature)
    except ValueError as err:
        fail(f"curvature: {err}")
