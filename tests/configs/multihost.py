"""The digits run of tests/test_multihost.py, launched with ``python -m experiments.train``.

SAM with a constant learning rate, so that a run trained 6 steps and resumed to 10 equals one
trained 10 steps at once. Curvature tracking is on (small) so that the tracker runs multi-process.
"""

import ml_collections

from tests.test_training import digits_config


def get_config() -> ml_collections.ConfigDict:
    return digits_config(
        "runs/multihost",
        **{
            "optimizer.name": "sam",
            "optimizer.schedule": "constant",
            "num_steps": 10,
            "curvature.every": 10,
            "curvature.quantities": "hessian",
            "curvature.num_iters": 5,
            "curvature.subset_size": 128,
        },
    )
