"""Command-line entry shared by the drivers: ``--config=<file>[:preset]`` plus ``--config.x=y``.

The flag is defined when a driver runs as a script, not when it is imported, so tests and other
drivers can import any number of driver modules.
"""
import sys
from typing import Callable

import ml_collections
from absl import app, logging
from ml_collections import config_flags

from sam_jax.training import PREEMPTED_EXIT_CODE, TrainingPreempted


def run(main: Callable[[ml_collections.ConfigDict], None], default_config: str) -> None:
    """Parses the command line and calls ``main(config)`` under ``absl.app``.

    A run stopped by SIGTERM or Ctrl-C (after saving its checkpoint) exits with
    ``PREEMPTED_EXIT_CODE`` (75); running the same command again resumes it.

    Args:
      main: the driver's body.
      default_config: config file used when ``--config`` is not given.
    """
    config_flag = config_flags.DEFINE_config_file("config", default_config, "Run config file[:preset].",
                                                  lock_config=True)

    def absl_main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # keep Orbax's per-checkpoint INFO lines off the console
        try:
            main(config_flag.value)
        except TrainingPreempted as err:
            print(err, file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_CODE)

    app.run(absl_main)
