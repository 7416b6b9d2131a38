"""Run configuration: the defaults every experiment starts from, and their validation.

A run is described by one ``ml_collections.ConfigDict``; experiment configs
(``experiments/configs/*.py``) import :func:`default_config` and change a few fields, and the command
line overrides any field with ``--config.<field>=<value>``. :func:`validate_config` rejects bad
values at start, with one message that says which field is wrong and what is allowed.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections

from sam_jax import optim
from sam_jax.data import DATASETS
from sam_jax.losses import LOSSES, MIXINGS, get_loss, get_mixing
from sam_jax.models import MODELS
from sam_jax.models.registry import Registry
from sam_jax.training.distributed import default_distributed_config, validate_distributed_config
from sam_jax.training.hooks.curvature import default_curvature_config, validate_curvature_config
from sam_jax.training.stopping import validate_early_stop

SCHEDULES = ("constant", "cosine", "step")
# in_memory: load_dataset(data.name) into arrays; array_record: stream from data.array_record_dir (docs/data.md).
DATA_FORMATS = ("in_memory", "array_record")


def _blocks(registry: Registry) -> ml_collections.ConfigDict:
    """One block of defaults per registered name that has hyper-parameters."""
    return ml_collections.ConfigDict({name: registry.defaults(name) for name in registry if registry.defaults(name)})


def optimizer_config(name: str = optim.DEFAULT_OPTIMIZER) -> ml_collections.ConfigDict:
    """The ``optimizer`` block: the name, the learning-rate schedule, and one block per optimizer.

    Each registered optimizer has its block ``optimizer.<name>`` with its paper defaults (see
    ``sam_jax.optim.OPTIMIZERS``); only the blocks that the chosen optimizer reads (its own and a
    SAM wrapper's ``base``) may differ from their defaults.
    """
    config = ml_collections.ConfigDict({name: dict(spec.defaults) for name, spec in optim.OPTIMIZERS.items()})
    config.name = name
    config.learning_rate = 0.05
    config.schedule = "cosine"  # constant | cosine (to 0 at the last step) | step
    config.warmup_steps = 0
    config.decay_steps = 0  # > 0: the schedule ends at this step and keeps its last value (0 = the run's end)
    config.step_boundaries = (0.5, 0.75)  # "step" schedule: fractions of training
    config.step_factor = 0.1  # "step" schedule: multiplier at each boundary
    return config


def mixing_config(name: str = "none") -> ml_collections.ConfigDict:
    """The ``mixing`` block: ``mixing.name`` (none, mixup, mit) and one block per method."""
    config = _blocks(MIXINGS)
    config.name = name
    return config


def loss_config(name: str = "cross_entropy") -> ml_collections.ConfigDict:
    """The ``loss`` block: ``loss.name`` and one block of hyper-parameters per loss that has any."""
    config = _blocks(LOSSES)
    config.name = name
    return config


def default_config() -> ml_collections.ConfigDict:
    """LeNet-5 on Fashion-MNIST with SGD; every field a run reads is defined here."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.workdir = "runs/default"

    config.data = ml_collections.ConfigDict()
    config.data.name = "fashion_mnist"
    config.data.data_dir = ""  # "" = resolution order of sam_jax.data (SAM_JAX_DATA_DIR, TFDS, Debian)
    config.data.cache_dir = ""  # decoded image-folder archives ("" = $SAM_JAX_CACHE_DIR, else ~/.cache/sam_jax)
    config.data.train_size = 0  # examples kept for training (0 = all that remain after validation)
    config.data.val_size = 5000  # held out from the train split (temperature scaling, validation metrics)
    config.data.test_size = 0  # the first examples of the test split kept (0 = all; smoke runs)
    config.data.pad_to = 0  # zero-pad images to pad_to x pad_to (e.g. 32: Fashion-MNIST for CIFAR models; 0 = off)
    config.data.split_seed = 0  # seeds the permutation that picks the train subset and validation split
    config.data.normalize = True  # per-channel standardisation with train-split statistics
    config.data.format = "in_memory"  # in_memory | array_record (stream a dataset larger than memory)
    config.data.array_record_dir = ""  # array_record: <dir>/train and <dir>/test from sam_jax.data.to_array_record
    config.data.read_threads = 8  # array_record: grain threads reading batches ahead (0 = on demand)
    # On-device augmentation in the train step (sam_jax.data.augment_batch); all off by default.
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.crop_padding = 0  # zero padding per side of the random crop (0 = no crop)
    config.data.augment.flip = False  # random left-right flip
    config.data.augment.cutout_size = 0  # side of the Cutout square (0 = no Cutout)

    config.model = ml_collections.ConfigDict()
    config.model.name = "lenet5"
    config.model.kwargs = ml_collections.ConfigDict()  # passed to the model constructor

    config.loss = loss_config()
    config.mixing = mixing_config()  # batch mixing in the train step: none | mixup | mit (MIT-L)
    config.optimizer = optimizer_config()

    config.batch_size = 128
    config.num_epochs = 5
    config.num_steps = 0  # > 0 overrides num_epochs

    config.eval_every_steps = 0  # 0 = at the end of every epoch
    # Also evaluate (and track curvature) at steps round(10 ** (i / n)), i = 0, 1, ... (0 = off).
    config.eval_points_per_decade = 0
    # Early stop (sam_jax.training.stopping; num_steps / num_epochs is then the cap; "" = off): end at the
    # first evaluation where `metric` (a metrics.jsonl key, e.g. "train/accuracy") is >= `at_least`, or,
    # with horizon_factor >= 1, at ceil(horizon_factor x that step); also end at the first evaluation
    # where `below_metric` (e.g. "train/loss") is < `below`.
    config.early_stop = ml_collections.ConfigDict(
        {"metric": "", "at_least": 0.0, "horizon_factor": 0.0, "below_metric": "", "below": 0.0}
    )
    config.eval_at_start = True  # evaluation, curvature and user hooks also run on the initial parameters
    config.eval_batch_size = 1000
    config.eval_train_size = 5000  # train examples in the train-set evaluation (0 = all)
    config.num_bins = 15  # calibration bins
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.resume = True  # continue the run in workdir when its saved config matches (else an error)
    config.overwrite = False  # delete the run in workdir and start afresh (the only way to delete one)
    config.progress_bar = True
    # The train step writes the new state into the old one's device buffers (saves one state's memory).
    config.donate_state = True

    config.curvature = default_curvature_config()
    # Multi-process runs (jax.distributed; off by default): see sam_jax.training.distributed.
    config.distributed = default_distributed_config()
    return config


def with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (a dict) with the fields it predates (added to ``default_config`` later) at their defaults."""

    def merge(saved: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(defaults)
        for key, value in saved.items():
            both_blocks = isinstance(value, Mapping) and isinstance(defaults.get(key), Mapping)
            merged[key] = merge(value, defaults[key]) if both_blocks else value
        return merged

    return merge(saved, default_config().to_dict())


def _unread_blocks_unchanged(
    where: str,
    config: ml_collections.ConfigDict,
    read: Iterable[str],
    registry: Registry,
) -> None:
    """A block the chosen method does not read must keep its defaults: a set field would be ignored."""
    defaults = registry.defaults
    for name in registry:
        if name in read or name not in config:
            continue
        unknown = sorted(set(config[name].keys()) - set(defaults(name)))
        if unknown:
            raise ValueError(
                f"{where}.{name}.{unknown[0]} is not a hyper-parameter of {name}; it has {sorted(defaults(name))}."
            )
        for field, default in defaults(name).items():
            value = config[name].get(field, default)
            if value != default:
                raise ValueError(
                    f"{where}.{name}.{field}={value!r} is set, but {where}.name={config.name!r} does "
                    f"not read {where}.{name}; set {where}.{config.name}.* instead (or "
                    f"{where}.name={name!r})."
                )


def chosen_hparams(block: ml_collections.ConfigDict) -> dict[str, Any]:
    """The hyper-parameters of the method ``block.name`` selects (``loss`` or ``mixing``) as a dict."""
    return dict(block.get(block.name) or {})


def optimizer_hparams(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """Every optimizer's hyper-parameters as plain dicts (defaults for a block the config lacks)."""
    opt = config.optimizer
    return optim.hparam_blocks({name: opt[name].to_dict() for name in optim.OPTIMIZERS if name in opt})


def run_batch_size(config: ml_collections.ConfigDict, num_train: int) -> int:
    """The batch size of a run: the whole training set for full-batch optimizers."""
    return num_train if optim.get_optimizer_spec(config.optimizer.name).full_batch else config.batch_size


def _validate_data_source(block: ml_collections.ConfigDict, fail: Callable[[str], None]) -> None:
    """Where the data comes from: a registered dataset in memory, or a converted one streamed from files."""
    if block.format not in DATA_FORMATS:
        fail(f"data.format={block.format!r}; choose one of {list(DATA_FORMATS)}.")
    if block.format == "in_memory":
        if block.name not in DATASETS:
            fail(f"data.name={block.name!r}; choose one of {sorted(DATASETS)}.")
        return
    if not block.array_record_dir:
        fail(
            "data.format='array_record' reads data.array_record_dir, which is empty; set it to the --out "
            "directory of `python -m sam_jax.data.to_array_record` (docs/data.md)."
        )
    if block.data_dir:
        fail("data.data_dir is not read when data.format='array_record'; leave it empty.")
    threads = block.read_threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        fail(f"data.read_threads={threads!r} must be an integer >= 0 (0 = read each batch when needed).")


def validate_training_set_size(config: ml_collections.ConfigDict, num_train: int) -> None:
    """Raises ``ValueError`` when a config, valid otherwise, asks for batches larger than ``num_train``.

    The one check that needs the training set's size: ``build_run`` validates the config before it
    loads the data, then makes this check.
    """
    if not optim.get_optimizer_spec(config.optimizer.name).full_batch and config.batch_size > num_train:
        raise ValueError(
            f"Bad config: batch_size={config.batch_size} is larger than the training set ({num_train} examples)."
        )


def validate_config(config: ml_collections.ConfigDict, num_train: int | None = None) -> None:
    """Raises one ``ValueError`` naming the bad field and the allowed values.

    Args:
      config: a run config (as from :func:`default_config`, after overrides).
      num_train: training examples, when known, to check the batch size against.
    """

    def fail(message: str) -> None:
        raise ValueError(f"Bad config: {message}")

    opt = config.optimizer
    _validate_data_source(config.data, fail)
    for where, registry in (("model", MODELS), ("loss", LOSSES), ("optimizer", optim.OPTIMIZERS), ("mixing", MIXINGS)):
        if config[where].name not in registry:
            fail(f"{where}.name={config[where].name!r}; choose one of {sorted(registry)}.")
    for where, build in (("loss", get_loss), ("mixing", get_mixing)):
        try:
            build(config[where].name, **chosen_hparams(config[where]))
        except ValueError as err:
            fail(f"{where}.{err}")
    blocks = optimizer_hparams(config)
    read = optim.blocks_read(opt.name, blocks)
    for name in read:
        try:
            optim.validate_hparams(name, blocks[name])
        except ValueError as err:
            fail(f"optimizer.{err}")
    try:
        _unread_blocks_unchanged("loss", config.loss, (config.loss.name,), LOSSES)
        _unread_blocks_unchanged("mixing", config.mixing, (config.mixing.name,), MIXINGS)
        _unread_blocks_unchanged("optimizer", opt, read, optim.OPTIMIZERS)
    except ValueError as err:
        fail(str(err))
    spec = optim.get_optimizer_spec(opt.name)
    try:
        spec.descent_loss(blocks[opt.name], config.loss.name, chosen_hparams(config.loss))
    except ValueError as err:
        fail(f"optimizer.name={opt.name!r} with loss.name={config.loss.name!r}: {err}")
    if opt.schedule not in SCHEDULES:
        fail(f"optimizer.schedule={opt.schedule!r}; choose one of {list(SCHEDULES)}.")
    if opt.learning_rate <= 0:
        fail(f"optimizer.learning_rate={opt.learning_rate} must be > 0.")
    if opt.warmup_steps < 0:
        fail(f"optimizer.warmup_steps={opt.warmup_steps} must be >= 0.")
    if isinstance(opt.decay_steps, bool) or not isinstance(opt.decay_steps, int) or opt.decay_steps < 0:
        fail(f"optimizer.decay_steps={opt.decay_steps!r} must be an integer >= 0 (0 = decay to the last step).")
    if any(not 0 < b < 1 for b in opt.step_boundaries):
        fail(f"optimizer.step_boundaries={opt.step_boundaries} must be fractions in (0, 1).")
    if opt.step_factor <= 0:
        fail(f"optimizer.step_factor={opt.step_factor} must be > 0.")
    m = spec.sub_batch_size(blocks[opt.name])
    if not spec.full_batch:
        if config.batch_size <= 0:
            fail(f"batch_size={config.batch_size} must be > 0.")
        if m and config.batch_size % m:
            fail(f"optimizer.{opt.name}.m={m} must divide batch_size={config.batch_size}.")
    if num_train is not None:
        validate_training_set_size(config, num_train)
    if config.num_epochs <= 0 and config.num_steps <= 0:
        fail("set num_epochs > 0 or num_steps > 0.")
    if min(config.data.val_size, config.data.train_size, config.data.test_size, config.data.pad_to) < 0:
        fail("data.train_size, data.val_size, data.test_size and data.pad_to must be >= 0.")
    if config.data.pad_to and config.data.format != "in_memory":
        fail("data.pad_to pads in-memory splits; pad the images when converting them for data.format='array_record'.")
    augment = config.data.augment
    for field in ("crop_padding", "cutout_size"):
        value = augment[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(f"data.augment.{field}={value!r} must be an integer >= 0 (0 = off).")
    if not isinstance(augment.flip, bool):
        fail(f"data.augment.flip={augment.flip!r} must be True or False.")
    for field in ("eval_batch_size", "log_every_steps", "checkpoint_every_steps", "num_bins"):
        if config[field] <= 0:
            fail(f"{field}={config[field]} must be > 0.")
    if config.eval_every_steps < 0 or config.eval_train_size < 0 or config.eval_points_per_decade < 0:
        fail("eval_every_steps, eval_points_per_decade and eval_train_size must be >= 0.")
    for problem in validate_early_stop(config.early_stop):
        fail(problem)
    for field in ("resume", "overwrite", "donate_state"):
        if not isinstance(config[field], bool):
            fail(f"{field}={config[field]!r} must be True or False.")
    try:
        validate_curvature_config(config.curvature)
    except ValueError as err:
        fail(f"curvature: {err}")
    try:
        validate_distributed_config(config.distributed)
    except ValueError as err:
        fail(str(err))
