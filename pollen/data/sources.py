"""Dataset sources: ``load_dataset(name, data_dir)`` returns a normalised :class:`Dataset`.

- ``fmnist`` (aliases ``fashion-mnist``, ``fashion_mnist``): Fashion-MNIST (Xiao et al., 2017),
  IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; default directory
  ``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``). Pixels
  scaled as (x/255 - 0.2860)/0.3530.
- ``mnist``: MNIST (LeCun et al., 1998), the same file names in ``data_dir``; (x/255 -
  0.1307)/0.3081.
- ``emnist``: EMNIST (Cohen et al., 2017), ``emnist-<split>-{train,test}-{images-idx3,
  labels-idx1}-ubyte[.gz]`` in ``data_dir`` or ``data_dir/gzip``; option ``split`` (``digits``
  by default, or ``mnist``, ``letters``, ``balanced``, ``bymerge``, ``byclass``). The files
  store every image transposed; images are returned upright and standardised with the training
  pixels' mean and std. ``letters`` labels 1..26 become 0..25.
- ``femnist``: EMNIST plus the writer of every training example, for the ``natural``
  partitioner (the FEMNIST setting of LEAF, Caldas et al., 2018): LEAF's JSON folders
  (``train/``, ``test/``) or TensorFlow Federated's ``fed_emnist_{train,test}.h5`` (see
  ``pollen.data.femnist``), or the IDX route: the official EMNIST files
  carry no writer ids, so this route needs one more file,
  ``emnist-<split>-train-writers-idx1-ubyte[.gz]``: an IDX integer vector with one writer id
  per training example (write it with :func:`pollen.data.idx.write_idx`). Without it loading
  fails and says so.
- ``cifar10``: CIFAR-10 (Krizhevsky, 2009) python batches (``data_batch_1..5``,
  ``test_batch``); ``data_dir`` is ``cifar-10-batches-py`` or its parent. Normalised per
  channel with mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010).
- ``digits``, ``breast_cancer`` (alias ``breast-cancer``), ``wine``: scikit-learn's bundled sets
  (optional extra ``pollen-fl[tabular]``), split 80/20 stratified with seed 0. ``digits`` is
  images ``(1, 8, 8)``; the others are tabular, standardised per feature with training
  statistics.
- ``synthetic``: Gaussian class clusters for fast tests; options ``num_classes``, ``features``,
  ``n_train``, ``n_test``, ``seed``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from pollen.data import images, tabular
from pollen.data.dataset import Dataset
from pollen.errors import DataError

_SOURCES: dict[str, Callable[..., Dataset]] = {
    "fmnist": images.load_fmnist,
    "mnist": images.load_mnist,
    "emnist": images.load_emnist,
    "femnist": images.load_femnist,
    "cifar10": images.load_cifar10,
    "digits": tabular.load_digits,
    "breast_cancer": tabular.load_breast_cancer,
    "wine": tabular.load_wine,
    "synthetic": tabular.load_synthetic,
}
_ALIASES = {
    "fashion-mnist": "fmnist",
    "fashion_mnist": "fmnist",
    "breast-cancer": "breast_cancer",
    "cifar-10": "cifar10",
}


def available_datasets() -> list[str]:
    """Returns the canonical names :func:`load_dataset` accepts, sorted."""
    return sorted(_SOURCES)


def load_dataset(name: str, data_dir: str | Path | None = None, **kw: object) -> Dataset:
    """Loads a dataset by name.

    Args:
        name: A name from :func:`available_datasets` or an alias (case-insensitive).
        data_dir: Directory holding the files; ``fmnist`` has a default, the scikit-learn and
            synthetic sets ignore it.
        **kw: Source options, e.g. ``split="balanced"`` for ``emnist``.

    Returns:
        The normalised dataset.

    Raises:
        DataError: Unknown name or option, missing or corrupt files.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _SOURCES:
        aliases = ", ".join(f"{a} -> {c}" for a, c in sorted(_ALIASES.items()))
        raise DataError(
            f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())} "
            f"(aliases: {aliases})"
        )
    loader = _SOURCES[key]
    accepted = [p for p in inspect.signature(loader).parameters if p != "data_dir"]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise DataError(
            f"dataset {key!r} got unknown option(s) {unknown}; it accepts "
            f"{accepted if accepted else 'no options'}"
        )
    directory = None if data_dir is None else Path(data_dir).expanduser()
    return loader(directory, **kw)

