"""Evaluation of saved runs: ``python -m experiments.evaluate --config.checkpoint=runs/quickstart``."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.checkpoint = ""  # run directory written by the train loop (required)
    config.step = -1  # checkpoint step; -1 = newest
    config.output_dir = ""  # default: <checkpoint>/evaluation
    config.ensemble = ""  # comma-separated further run directories: deep ensemble with `checkpoint`
    config.mc_dropout_samples = 0  # K stochastic passes (needs a model with dropout_rate > 0)
    # Samples from the posterior of an optimizer that learns one (bSAM; Möllenhoff & Khan 2022,
    # arXiv:2210.01620, use 32); 0 = predict with the mean. Ignored for point-estimate optimizers.
    config.posterior_samples = 32
    config.ood_dataset = ""  # e.g. "mnist" for a Fashion-MNIST run, "svhn" for CIFAR-10
    config.ood_data_dir = ""  # "" = the usual resolution order of sam_jax.data
    config.corruptions = "auto"  # "auto": every CIFAR-10-C corruption found (CIFAR-10 runs); "" = off
    config.corruption_data_dir = ""
    config.num_bins = 15
    config.batch_size = 1000
    config.seed = 0
    return config
