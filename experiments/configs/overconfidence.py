"""Whether runs went past their best held-out NLL: ``python -m experiments.overconfidence --config.runs=...``."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.runs = ""  # comma-separated run directories, each optionally "label=directory" (required)
    config.split = "test"  # the evaluated split whose NLL, accuracy and mean confidence are read
    config.output_dir = ""  # where overconfidence.{md,json,png} go (required)
    config.title = "Held-out NLL and confidence minus accuracy"
    return config
