"""The train / validation / test arrays a run config describes."""

from typing import NamedTuple, Optional

import ml_collections

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
    normalizer: Optional[data.Normalizer]

    def prepare(self, dataset: data.ArrayDataset) -> data.ArrayDataset:
        """``dataset`` standardised as the run's splits were."""
        return data.normalize(dataset, self.normalizer) if self.normalizer is not None else dataset


def load_run_data(config: ml_collections.ConfigDict) -> RunData:
    """Loads ``config.data.name``, splits off validation and standardises with train statistics."""
    cfg = config.data
    data_dir = cfg.data_dir or None
    full_train = data.load_dataset(cfg.name, "train", data_dir=data_dir)
    test = data.load_dataset(cfg.name, "test", data_dir=data_dir)
    train, val = data.train_val_split(
        full_train, train_size=cfg.train_size or None, val_size=cfg.val_size, seed=cfg.split_seed
    )
    normalizer = data.fit_normalizer(train) if cfg.normalize else None
    run_data = RunData(train, val, test, full_train.num_classes, normalizer)
    return run_data._replace(train=run_data.prepare(train), val=run_data.prepare(val), test=run_data.prepare(test))
