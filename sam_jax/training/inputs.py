"""The train / validation / test arrays a run config describes."""

import os
from typing import NamedTuple

import ml_collections
import numpy as np

from sam_jax import data


class RunData(NamedTuple):
    """Standardised splits of one dataset.

    Attributes:
      train: the examples trained on (a seeded subset when ``data.train_size`` is set).
      val: ``data.val_size`` held-out train examples (temperature scaling, validation metrics).
      test: the dataset's test split.
      num_classes: number of classes K.
      normalizer: the train-split statistics applied to every split (None when ``data.normalize``
        is off); apply it to any other data fed to the model (OOD sets, corruptions).
    """

    train: data.ArrayDataset
    val: data.ArrayDataset
    test: data.ArrayDataset
    num_classes: int
    normalizer: data.Normalizer | None

    def prepare(self, dataset: data.ArrayDataset) -> data.ArrayDataset:
        """``dataset`` standardised as the run's splits were."""
        return data.normalize(dataset, self.normalizer) if self.normalizer is not None else dataset


def _open_streamed(cfg: ml_collections.ConfigDict, split: str) -> data.ArrayDataset:
    """``split`` of ``cfg.array_record_dir``, streamed; its metadata must name the dataset ``cfg.name``."""
    directory = os.path.join(cfg.array_record_dir, split)
    name = data.read_array_record_metadata(directory).name
    if name != cfg.name:
        raise ValueError(
            f"{directory} holds dataset {name!r}, but data.name={cfg.name!r}; set data.name={name!r} or point "
            f"data.array_record_dir at a conversion of {cfg.name!r}."
        )
    return data.open_array_record(directory, read_threads=cfg.read_threads)


def load_run_data(config: ml_collections.ConfigDict) -> RunData:
    """Loads ``config.data.name``, splits off validation and standardises with train statistics.

    With ``data.format="array_record"`` the splits are streamed from ``data.array_record_dir``
    (``sam_jax.data.open_array_record``): the validation split, the training subset and their
    standardisation read nothing until batches are read, and hold the values the in-memory splits
    would hold.
    """
    cfg = config.data
    if cfg.format == "array_record":
        full_train, test = _open_streamed(cfg, "train"), _open_streamed(cfg, "test")
    else:
        where = {"data_dir": cfg.data_dir or None, "cache_dir": cfg.cache_dir or None}
        full_train = data.load_dataset(cfg.name, "train", **where)
        test = data.load_dataset(cfg.name, "test", **where)
        if cfg.pad_to:
            full_train, test = data.pad_to_size(full_train, cfg.pad_to), data.pad_to_size(test, cfg.pad_to)
    if cfg.test_size:
        test = data.subset(test, np.arange(min(cfg.test_size, len(test.labels))))
    train, val = data.train_val_split(
        full_train, train_size=cfg.train_size or None, val_size=cfg.val_size, seed=cfg.split_seed
    )
    normalizer = data.fit_normalizer(train) if cfg.normalize else None
    run_data = RunData(train, val, test, full_train.num_classes, normalizer)
    return run_data._replace(train=run_data.prepare(train), val=run_data.prepare(val), test=run_data.prepare(test))
