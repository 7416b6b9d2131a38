"""Config, the one train loop, the assembly of a run, evaluation, checkpoints and writers."""

from sam_jax.training.build import Run, build_run, check_run_data, load_trained
from sam_jax.training.checkpoint import Checkpointer, CheckpointError
from sam_jax.training.config import (
    default_config,
    loss_config,
    mixing_config,
    optimizer_config,
    optimizer_hparams,
    run_batch_size,
    validate_config,
)
from sam_jax.training.distributed import initialize_distributed
from sam_jax.training.evaluation import Hook, evaluate, predict, top_eigenvalue
from sam_jax.training.failures import TrainingDivergedError
from sam_jax.training.inputs import RunData, load_run_data
from sam_jax.training.loop import train_and_evaluate
from sam_jax.training.optimizers import learning_rate_schedule, make_optimizer
from sam_jax.training.predictive import Member, make_predictive, predictive_kind
from sam_jax.training.preemption import PREEMPTED_EXIT_CODE, TrainingPreempted
from sam_jax.training.provenance import provenance
from sam_jax.training.state import TrainState
from sam_jax.training.steps import make_eval_step, make_train_step, model_forward
from sam_jax.training.workdir import DiskFullError, WorkdirBusyError, WorkdirError
from sam_jax.training.writers import MetricsWriter, read_metrics

__all__ = [
    "CheckpointError",
    "PREEMPTED_EXIT_CODE",
    "TrainingPreempted",
    "DiskFullError",
    "WorkdirBusyError",
    "WorkdirError",
    "check_run_data",
    "Checkpointer",
    "Hook",
    "Member",
    "MetricsWriter",
    "Run",
    "RunData",
    "TrainState",
    "top_eigenvalue",
    "TrainingDivergedError",
    "build_run",
    "default_config",
    "loss_config",
    "mixing_config",
    "optimizer_config",
    "optimizer_hparams",
    "run_batch_size",
    "evaluate",
    "initialize_distributed",
    "learning_rate_schedule",
    "load_run_data",
    "load_trained",
    "make_eval_step",
    "make_optimizer",
    "make_predictive",
    "make_train_step",
    "model_forward",
    "predict",
    "predictive_kind",
    "provenance",
    "read_metrics",
    "train_and_evaluate",
    "validate_config",
]
