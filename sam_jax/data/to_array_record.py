"""Converts a dataset once to ArrayRecord files that runs then stream from (docs/data.md).

A registered dataset (``sam_jax.data.DATASETS``, found by ``load_dataset``; it must fit in memory
once, for the conversion)::

    python -m sam_jax.data.to_array_record --name=fashion_mnist --out=/data/array_record/fashion_mnist

A folder of image files per class, e.g. ImageNet (``ROOT/train/<synset>/*.JPEG``, and the
validation images sorted into ``ROOT/test/<synset>/``), read one image at a time::

    python -m sam_jax.data.to_array_record --image_folder=/data/imagenet --image_size=64 \\
        --name=imagenet64 --out=/data/array_record/imagenet64

Each split goes to ``<out>/<split>/`` (layout: ``sam_jax.data.array_record_format``); train with
``--config.data.format=array_record --config.data.array_record_dir=<out> --config.data.name=<name>``.
"""

import os
from collections.abc import Sequence

from absl import app, flags

from sam_jax.data.array_record_format import ArrayRecordMetadata
from sam_jax.data.array_record_writer import write_array_record
from sam_jax.data.image_folder import image_folder_classes, read_image_folder
from sam_jax.data.sources import load_dataset

DEFAULT_EXAMPLES_PER_SHARD = 10_000


def convert_dataset(
    name: str,
    out: str,
    *,
    splits: Sequence[str] = ("train", "test"),
    data_dir: str | None = None,
    examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD,
) -> dict[str, ArrayRecordMetadata]:
    """Writes the splits of a registered dataset, as ``load_dataset`` returns them, to ``<out>/<split>/``.

    Returns:
      The metadata of each split written.
    """
    return {
        split: write_array_record(
            load_dataset(name, split, data_dir=data_dir),
            os.path.join(out, split),
            name=name,
            split=split,
            examples_per_shard=examples_per_shard,
        )
        for split in splits
    }


def convert_image_folder(
    root: str,
    out: str,
    *,
    name: str,
    image_size: int,
    splits: Sequence[str] = ("train", "test"),
    examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD,
) -> dict[str, ArrayRecordMetadata]:
    """Writes ``<root>/<split>/<class>/<image files>`` to ``<out>/<split>/``, one image in memory at a time.

    The classes (and so the labels) are the sorted folders of ``<root>/train``, for every split.

    Returns:
      The metadata of each split written.
    """
    classes = image_folder_classes(os.path.join(root, "train"))
    return {
        split: write_array_record(
            read_image_folder(os.path.join(root, split), classes, image_size),
            os.path.join(out, split),
            name=name,
            split=split,
            num_classes=len(classes),
            examples_per_shard=examples_per_shard,
        )
        for split in splits
    }


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    options = flags.FLAGS
    common = {"splits": options.splits, "examples_per_shard": options.examples_per_shard}
    if options.image_folder:
        written = convert_image_folder(
            options.image_folder, options.out, name=options.name, image_size=options.image_size, **common
        )
    else:
        written = convert_dataset(options.name, options.out, data_dir=options.data_dir or None, **common)
    for split, metadata in written.items():
        print(
            f"{os.path.join(options.out, split)}: {metadata.num_examples} examples {metadata.image_shape}, "
            f"{metadata.num_classes} classes, {len(metadata.shards)} shards"
        )


def _define_flags() -> None:
    """Defined only when run as a script, so that importing the module defines no flags."""
    flags.DEFINE_string("name", None, "Dataset name: a registered one, or any name with --image_folder.")
    flags.DEFINE_string("out", None, "Output directory; each split goes to <out>/<split>/ (must be new or empty).")
    flags.DEFINE_list("splits", ["train", "test"], "Splits to convert.")
    flags.DEFINE_string("data_dir", "", "Where load_dataset looks first (as config.data.data_dir).")
    flags.DEFINE_string("image_folder", "", "Root of <split>/<class>/<image files>; converts those instead.")
    flags.DEFINE_integer("image_size", 64, "--image_folder: side of the square images written.")
    flags.DEFINE_integer("examples_per_shard", DEFAULT_EXAMPLES_PER_SHARD, "Records per ArrayRecord file.")
    flags.mark_flags_as_required(["name", "out"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
