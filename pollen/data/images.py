"""Image sources read from their official file formats: MNIST-family IDX files and CIFAR-10.

See :mod:`pollen.data.sources` for the names, file layouts and normalisation of each source.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pollen.data.dataset import Dataset
from pollen.data.idx import read_idx
from pollen.errors import DataError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_MEAN_STD = (0.2860, 0.3530)
MNIST_MEAN_STD = (0.1307, 0.3081)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
EMNIST_CLASSES = {"digits": 10, "mnist": 10, "letters": 26, "balanced": 47, "bymerge": 47,
                  "byclass": 62}
_MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _pixel_lut(mean: float, std: float) -> np.ndarray:
    """Maps every uint8 pixel value to ``(v/255 - mean)/std`` as float32, shape (256,)."""
    return ((np.arange(256) / 255.0 - mean) / std).astype(np.float32)


def _find_files(dirs: list[Path], stems: tuple[str, ...]) -> list[Path] | None:
    """Returns the files named ``stems`` (``.gz`` or plain) from the first dir holding all."""
    for directory in dirs:
        found = [next((p for p in (directory / f"{s}.gz", directory / s) if p.is_file()), None)
                 for s in stems]
        if all(found):
            return found
    return None


def _missing(what: str, dirs: list[Path], stems: tuple[str, ...], fix: str) -> DataError:
    looked = "; ".join(f"{d / s}[.gz]" for d in dirs for s in stems)
    state = "" if any(d.is_dir() for d in dirs) else f" (directory {dirs[0]} does not exist)"
    return DataError(f"{what} not found{state}: looked for {looked}. {fix}")


def _check_labels(y: np.ndarray, num_classes: int, where: Path) -> np.ndarray:
    """Returns ``y`` as int64, raising DataError if a label is outside ``[0, num_classes)``."""
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"{where}: labels span [{y.min()}, {y.max()}], expected [0, {num_classes}); "
            "the file may be corrupt or belong to another dataset"
        )
    return y


def _read_pair(images_path: Path, labels_path: Path, num_classes: int,
               label_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reads an images/labels IDX pair; returns uint8 (N, H, W) and int64 (N,)."""
    x = read_idx(images_path, ndim=3)
    if x.dtype != np.uint8:
        raise DataError(f"{images_path} holds {x.dtype} pixels, expected uint8")
    y = read_idx(labels_path, ndim=1)
    if len(y) != len(x):
        raise DataError(
            f"{images_path} has {len(x)} images but {labels_path} has {len(y)} labels; "
            "the two files must come from the same release"
        )
    return x, _check_labels(y.astype(np.int64) - label_offset, num_classes, labels_path)


def _idx_dataset(name: str, files: list[Path], num_classes: int,
                 mean_std: tuple[float, float] | None, transpose: bool = False,
                 label_offset: int = 0) -> Dataset:
    """Builds a Dataset from [train images, train labels, test images, test labels] files.

    ``mean_std=None`` standardises with the training pixels' own mean and std.
    """
    x_train, y_train = _read_pair(files[0], files[1], num_classes, label_offset)
    x_test, y_test = _read_pair(files[2], files[3], num_classes, label_offset)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{files[0]} holds {x_train.shape[1:]} images but {files[2]} holds "
                        f"{x_test.shape[1:]}")
    if mean_std is None:  # exact statistics from the 256-bin pixel histogram
        counts = np.bincount(x_train.ravel(), minlength=256)
        values = np.arange(256) / 255.0
        mean = float(counts @ values / counts.sum())
        mean_std = (mean, float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())) or 1.0)
    lut = _pixel_lut(*mean_std)
    if transpose:  # EMNIST stores each image transposed
        x_train = np.ascontiguousarray(x_train.transpose(0, 2, 1))
        x_test = np.ascontiguousarray(x_test.transpose(0, 2, 1))
    x_train = lut[x_train][:, None]  # (N, 1, H, W)
    x_test = lut[x_test][:, None]
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes, x_train.shape[1:])


def load_fmnist(data_dir: Path | None) -> Dataset:
    """Fashion-MNIST, scaled as (x/255 - 0.2860)/0.3530."""
    dirs = [data_dir if data_dir is not None else FMNIST_DIR]
    files = _find_files(dirs, _MNIST_STEMS)
    if files is None:
        raise _missing("Fashion-MNIST", dirs, _MNIST_STEMS,
                       "Install it with `sudo apt-get install dataset-fashion-mnist` or pass "
                       "--data-dir DIR with the four IDX files.")
    return _idx_dataset("fmnist", files, 10, FMNIST_MEAN_STD)


def load_mnist(data_dir: Path | None) -> Dataset:
    """MNIST, scaled as (x/255 - 0.1307)/0.3081."""
    fix = "Download the four MNIST IDX files and pass --data-dir DIR holding them."
    if data_dir is None:
        raise DataError(f"MNIST has no default location. {fix}")
    files = _find_files([data_dir], _MNIST_STEMS)
    if files is None:
        raise _missing("MNIST", [data_dir], _MNIST_STEMS, fix)
    return _idx_dataset("mnist", files, 10, MNIST_MEAN_STD)


def _emnist_files(data_dir: Path | None, split: str, stems: tuple[str, ...], what: str,
                  fix: str) -> list[Path]:
    if split not in EMNIST_CLASSES:
        raise DataError(f"unknown EMNIST split {split!r}; valid splits: "
                        f"{', '.join(EMNIST_CLASSES)}")
    if data_dir is None:
        raise DataError(f"{what} has no default location. {fix}")
    dirs = [data_dir, data_dir / "gzip"]
    files = _find_files(dirs, stems)
    if files is None:
        raise _missing(what, dirs, stems, fix)
    return files


def load_emnist(data_dir: Path | None, split: str = "digits") -> Dataset:
    """EMNIST ``split``, upright, standardised with the training pixels' mean and std."""
    parts = ("train-images-idx3", "train-labels-idx1", "test-images-idx3", "test-labels-idx1")
    stems = tuple(f"emnist-{split}-{part}-ubyte" for part in parts)
    files = _emnist_files(data_dir, split, stems, f"EMNIST ({split})",
                          "Download the EMNIST IDX files (gzip.zip from NIST) and pass "
                          "--data-dir DIR holding them.")
    return _idx_dataset("emnist", files, EMNIST_CLASSES[split], None, transpose=True,
                        label_offset=1 if split == "letters" else 0)


def load_femnist(data_dir: Path | None, split: str = "digits") -> Dataset:
    """EMNIST split by writer (``groups_train``: the writer of every training example), from LEAF's
    JSON files, TensorFlow Federated's ``.h5`` files (``pollen.data.femnist``), or EMNIST's IDX
    files plus a writer-id file; the folder's contents say which."""
    if data_dir is not None:
        from pollen.data import femnist

        kind = femnist.detect(Path(data_dir))
        if kind == "leaf":
            return femnist.load_leaf(Path(data_dir))
        if kind == "tff":
            return femnist.load_tff(Path(data_dir), only_digits=None)
    stem = f"emnist-{split}-train-writers-idx1-ubyte"
    (writers_file,) = _emnist_files(
        data_dir, split, (stem,), "FEMNIST writer ids",
        f"The natural (per-writer) split needs {stem}[.gz], an IDX integer vector with one "
        "writer id per training example (the official EMNIST release has none; derive it "
        "from LEAF's FEMNIST data). Use dataset 'emnist' for the other partitioners.")
    base = load_emnist(data_dir, split)
    writers = read_idx(writers_file, ndim=1)
    if writers.dtype.kind not in "iu" or len(writers) != len(base.y_train):
        raise DataError(f"{writers_file} holds {len(writers)} {writers.dtype} values, expected "
                        f"{len(base.y_train)} integer writer ids (one per training example)")
    return Dataset("femnist", base.x_train, base.y_train, base.x_test, base.y_test,
                   base.num_classes, base.input_shape, writers.astype(np.int64))


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 python batch; returns uint8 (N, 3072) and int64 (N,)."""
    try:
        with path.open("rb") as f:
            # CIFAR-10 is distributed only as Python pickles, so pickle is unavoidable here;
            # unpickling runs code, so read these files only from a source you trust.
            batch = pickle.load(f, encoding="bytes")  # noqa: S301
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}") from exc
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}); "
                        "re-download cifar-10-python.tar.gz and extract it again") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and "
                        "b'labels'")
    x = np.asarray(batch[b"data"])
    y = np.asarray(batch[b"labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),):
        raise DataError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, got "
                        f"{x.dtype} {x.shape} and labels of shape {y.shape}")
    return x, _check_labels(y, 10, path)


def _cifar_normalise(x: np.ndarray) -> np.ndarray:
    """uint8 (N, 3072) -> float32 (N, 3, 32, 32) normalised per channel."""
    x = x.reshape(-1, 3, 32, 32)
    out = np.empty(x.shape, dtype=np.float32)
    for c, (mean, std) in enumerate(zip(CIFAR10_MEAN, CIFAR10_STD)):
        out[:, c] = _pixel_lut(mean, std)[x[:, c]]
    return out


def load_cifar10(data_dir: Path | None) -> Dataset:
    """CIFAR-10 from the python batches, normalised per channel."""
    fix = ("Download cifar-10-python.tar.gz, extract it, and pass --data-dir pointing at "
           "cifar-10-batches-py or its parent.")
    if data_dir is None:
        raise DataError(f"CIFAR-10 has no default location. {fix}")
    names = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    dirs = [data_dir, data_dir / "cifar-10-batches-py"]
    folder = next((d for d in dirs if all((d / n).is_file() for n in names)), None)
    if folder is None:
        looked = "; ".join(str(d / n) for d in dirs for n in names)
        raise DataError(f"CIFAR-10 not found: looked for {looked}. {fix}")
    train = [_read_cifar_batch(folder / n) for n in names[:-1]]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    x_train = _cifar_normalise(np.concatenate([x for x, _ in train]))
    y_train = np.concatenate([y for _, y in train])
    return Dataset("cifar10", x_train, y_train, _cifar_normalise(x_test), y_test, 10, (3, 32, 32))
