"""Command-line entry shared by the drivers: ``--config=<file>[:preset]`` plus ``--config.x=y``.

The flag is defined when a driver runs as a script, not when it is imported, so tests and other
drivers can import any number of driver modules.
"""

import importlib.util
import os
import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from sam_jax.training import PREEMPTED_EXIT_CODE, TrainingPreempted, WorkdirError, initialize_distributed


def _config_help(default_config: str) -> str:
    """The ``--config`` help text: the default file and the presets it defines (its ``PRESETS``)."""
    path = os.path.relpath(default_config.split(":")[0])
    spec = importlib.util.spec_from_file_location("_default_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    presets = getattr(module, "PRESETS", ())
    listed = f" Presets: {', '.join(f'{path}:{p}' for p in presets)}." if presets else " This file has no presets."
    return (
        f"Run config file[:preset] (default {os.path.relpath(default_config)}).{listed} Override any field with "
        "--config.<field>=<value>; sam_jax.training.default_config() lists them."
    )


def run_grid(
    main: Callable[[ml_collections.ConfigDict, str, str], None],
    default_config: str,
    modes: tuple[str, ...],
    mode_help: str,
) -> None:
    """``run`` for a grid driver: adds ``--mode`` (one of ``modes``, default the last) and ``--shard=i/n``.

    Calls ``main(config, mode, shard)``. The flags are defined here, when a driver runs as a script,
    so that tests and other drivers can import any number of driver modules.
    """
    flags.DEFINE_enum("mode", modes[-1], list(modes), mode_help)
    flags.DEFINE_string("shard", "0/1", "Train only shard i of n (jobs i, i+n, ...), e.g. 0/2.")
    run(lambda config: main(config, flags.FLAGS.mode, flags.FLAGS.shard), default_config)


def run(main: Callable[[ml_collections.ConfigDict], None], default_config: str) -> None:
    """Parses the command line and calls ``main(config)`` under ``absl.app``.

    A run stopped by SIGTERM or Ctrl-C (after saving its checkpoint) exits with
    ``PREEMPTED_EXIT_CODE`` (75); running the same command again resumes it. A ``WorkdirError``
    (the run directory is unwritable, full, in use by another process, or holds another run) prints
    its message and exits with 1.

    A config with a ``distributed`` block (every run config) joins its multi-process run first,
    before ``main`` or anything else touches a device: ``jax.distributed.initialize`` fails once
    the XLA backend exists, because the backend's device list comes from the topology that the
    processes exchange at initialization (docs/scaling.md).

    Args:
      main: the driver's body.
      default_config: config file used when ``--config`` is not given.
    """
    config_flag = config_flags.DEFINE_config_file(
        "config", default_config, _config_help(default_config), lock_config=True
    )
    # Listed by --help (not only --helpfull): a key flag of the driver being run.
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["config"])

    def absl_main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # keep Orbax's per-checkpoint INFO lines off the console
        config = config_flag.value
        if "distributed" in config:  # first: see the docstring
            initialize_distributed(config.distributed)
        try:
            main(config)
        except TrainingPreempted as err:
            print(err, file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_CODE)
        except WorkdirError as err:  # the run directory's state, not a bug: the message, no traceback
            print(f"{type(err).__name__}: {err}", file=sys.stderr)
            sys.exit(1)

    app.run(absl_main)
