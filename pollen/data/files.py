"""Loaders for one party's own data files: CSV, Parquet, tensor files and image folders.

A federated app's ``load_data(ctx)`` runs on every party and reads that party's files. These
functions turn the common formats into a :class:`Table` of tensors ready for training
(``x, y = read_csv(...)``), or, for image sets larger than memory, an :class:`ImageFolder` that
reads each image when it is asked for.

Labels must mean the same thing on every party, even on a party that lacks some class: pass the
full list of class values as ``classes=`` (the same list everywhere), and label ``i`` is
``classes[i]``. Without it, integer labels are used as they are and string labels (and image
folder names) are numbered in sorted order, which agrees across parties only when every party
holds every class.

``standardize=True`` scales each feature by the mean and std of *this file*, so each party uses
its own statistics; for identical scaling everywhere, standardise with agreed statistics instead.

Pyarrow (extra ``parquet``) and Pillow (extra ``images``) are optional: without them
:func:`read_parquet` and the image loaders raise :class:`pollen.errors.MissingExtraError` with
the ``pip install`` line.
"""

from __future__ import annotations

import csv
import pickle
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pollen.errors import DataError, require

TASKS = ("auto", "classification", "regression", "multilabel")
MAX_AUTO_CLASSES = 50  # task "auto": an integer target with at most this many values is a label
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TENSOR_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")

Locate = Callable[[int], str]  # data row index -> where it is in the file, e.g. "line 7"


@dataclass(frozen=True, eq=False, repr=False)
class Table:
    """One party's examples as tensors. Unpacks as ``x, y = table``; ``len(table)`` is N.

    Attributes:
        x: Inputs, ``(N, F)`` float32. From :func:`load_image_folder` it is ``(N, C, H, W)``, and
            from :func:`read_tensors` whatever shape the file holds.
        y: Targets: ``(N,)`` int64 class indices for classification, ``(N,)`` float32 for one
            regression target, ``(N, T)`` float32 for several regression targets or for 0/1
            multi-label targets.
        feature_names: Name of each feature column (empty for images).
        target_names: Name of each target column.
        classes: For classification, the class values in label order (example ``i`` is of class
            ``classes[y[i]]``); None otherwise.
        task: ``"classification"``, ``"regression"`` or ``"multilabel"``.
    """

    x: torch.Tensor
    y: torch.Tensor
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]
    classes: tuple | None
    task: str

    def __post_init__(self) -> None:
        if self.task not in TASKS[1:]:
            raise DataError(f"unknown task {self.task!r}; valid tasks: {', '.join(TASKS[1:])}")
        if len(self.x) != len(self.y):
            raise DataError(f"x has {len(self.x)} examples but y has {len(self.y)}")

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.x
        yield self.y

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return (f"Table(n={len(self)}, x={tuple(self.x.shape)}, y={tuple(self.y.shape)}, "
                f"task={self.task!r}, classes={self.classes!r})")


# --- cells and labels -------------------------------------------------------------------------

def _show(cell: object) -> str:
    """``repr`` of a cell, without numpy's ``np.str_(...)`` wrapping."""
    return repr(cell.item() if isinstance(cell, np.generic) else cell)


def _is_missing(cell: object) -> bool:
    if cell is None:
        return True
    if isinstance(cell, (float, np.floating)):
        return bool(np.isnan(cell))
    return isinstance(cell, (str, np.str_)) and not cell.strip()


def _label_key(value: object) -> object:
    """A comparable key of a class value: ``1``, ``1.0`` and ``"1"`` all give the int 1; other
    finite numbers give the float; anything else its stripped text."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    text = str(value).strip()
    try:
        number = float(value) if isinstance(value, (float, np.floating)) else float(text)
    except ValueError:
        return text
    if not np.isfinite(number):
        return text
    return int(number) if number.is_integer() else number


def _class_index(classes: Sequence, key: Callable[[object], object]) -> dict:
    """Maps the key of every class value to its label, refusing duplicates."""
    if isinstance(classes, (str, bytes)) or not len(classes):
        raise DataError(f"classes must be a non-empty list of class values, got {classes!r}")
    index: dict = {}
    for label, value in enumerate(classes):
        if key(value) in index:
            raise DataError(f"classes lists {value!r} twice (as entries {index[key(value)]} "
                            f"and {label}); list every class once")
        index[key(value)] = label
    return index


def _try_numbers(column: np.ndarray) -> np.ndarray | None:
    """``column`` as float64 (NaN where a cell is empty), or None if a cell is not a number."""
    if column.dtype.kind in "Mm":
        return None
    try:
        return column.astype(np.float64)
    except (TypeError, ValueError):
        pass
    out = np.empty(len(column))
    for i, cell in enumerate(column):
        try:
            out[i] = np.nan if _is_missing(cell) else float(cell)
        except (TypeError, ValueError):
            return None
    return out


_FIXES = {
    "feature": ("leave the column out with features=[...]",
                "features must be numeric: encode categories as numbers (e.g. one 0/1 column per "
                "category) or leave the column out with features=[...]"),
    "target": ("every example needs a target",
               "a regression or multi-label target must be numeric (use task='classification' "
               "for class labels)"),
}


def _numbers(name: str, column: np.ndarray, role: str, source: str, locate: Locate) -> np.ndarray:
    """``column`` as float64, or DataError at its first empty, non-numeric or infinite cell.

    ``role`` (``"feature"`` or ``"target"``) chooses the advice in the message.
    """
    values = _try_numbers(column)
    if values is not None and np.isfinite(values).all():
        return values
    if_empty, if_bad = _FIXES[role]
    for i, cell in enumerate(column):
        if _is_missing(cell):
            raise DataError(f"{source}: column {name!r} is empty on {locate(i)}; fill in the "
                            f"value or drop the row ({if_empty})")
        number = _try_numbers(column[i:i + 1])
        if number is None or not np.isfinite(number[0]):
            raise DataError(f"{source}: column {name!r} holds {_show(cell)} on {locate(i)}, "
                            f"expected a finite number; {if_bad}")
    raise AssertionError("unreachable: a bad cell was found above")  # pragma: no cover


def _class_labels(name: str, column: np.ndarray, classes: Sequence | None, source: str,
                  locate: Locate) -> tuple[np.ndarray, tuple]:
    """Class labels ``(N,)`` int64 and the class values in label order."""
    keys = []
    for i, cell in enumerate(column):
        if _is_missing(cell):
            raise DataError(f"{source}: target {name!r} is empty on {locate(i)}; every example "
                            "needs a label: fill it in or drop the row")
        keys.append(_label_key(cell))
    if classes is not None:
        index = _class_index(classes, _label_key)
        for i, key in enumerate(keys):
            if key not in index:
                raise DataError(f"{source}: label {_show(column[i])} on {locate(i)} is not one of "
                                f"classes={list(classes)!r}; add it to classes (the same list on "
                                "every party) or drop the row")
        return np.array([index[k] for k in keys], np.int64), tuple(classes)
    if all(isinstance(k, int) for k in keys):
        labels = np.array(keys, np.int64)
        if labels.min() < 0:
            i = int(np.argmin(labels))
            raise DataError(f"{source}: label {labels[i]} on {locate(i)} is negative; integer "
                            "labels are used as they are and must be >= 0: pass "
                            "classes=[...] listing the class values to number them 0, 1, ...")
        return labels, tuple(range(int(labels.max()) + 1))
    if all(isinstance(k, (int, float)) for k in keys):
        i = next(i for i, k in enumerate(keys) if isinstance(k, float))
        raise DataError(f"{source}: target {name!r} holds {_show(column[i])} on {locate(i)}, not "
                        "an integer class label; use task='regression' for a numeric target, or "
                        "pass classes=[...] listing the class values")
    names = sorted({str(cell).strip() for cell in column})  # string labels: sorted order
    index = {n: label for label, n in enumerate(names)}
    return np.array([index[str(cell).strip()] for cell in column], np.int64), tuple(names)


# --- columns -> Table (shared by read_csv and read_parquet) ----------------------------------

def _select(available: Sequence[str], target: str | Sequence[str],
            features: Sequence[str] | None, source: str,
            hint: str = "") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resolves the target and feature column names against the file's columns."""
    def names(value: str | Sequence[str], what: str) -> tuple[str, ...]:
        chosen = (value,) if isinstance(value, str) else tuple(value)
        if not chosen or not all(isinstance(c, str) for c in chosen):
            raise DataError(f"{what} must be a column name or a list of column names, "
                            f"got {value!r}")
        if len(set(chosen)) < len(chosen):
            raise DataError(f"{what} names a column twice: {list(chosen)!r}")
        return chosen

    targets = names(target, "target")
    feats = (tuple(c for c in available if c not in targets) if features is None
             else names(features, "features"))
    for column in targets + feats:
        if column not in available:
            raise DataError(f"{source} has no column {column!r}; its columns are "
                            f"{', '.join(map(repr, available))}{hint}. Names are case-sensitive")
    both = [c for c in feats if c in targets]
    if both:
        raise DataError(f"column {both[0]!r} is both a target and a feature; leave it out of "
                        "features=")
    if not feats:
        raise DataError(f"{source}: no feature columns are left besides the target "
                        f"{', '.join(map(repr, targets))}")
    return targets, feats


def _resolve_task(task: str, targets: tuple[str, ...], column: np.ndarray,
                  classes: Sequence | None) -> str:
    """Turns ``task="auto"`` into a task and refuses combinations that make no sense."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if len(targets) > 1 and task == "classification":
        raise DataError(f"classification takes one target column, got {len(targets)}; for "
                        "several 0/1 columns use task='multilabel', for several numbers "
                        "task='regression'")
    if task == "auto":
        if len(targets) > 1:
            task = "regression"
        else:
            values = _try_numbers(column)
            values = values[np.isfinite(values)] if values is not None else None
            categorical = values is None or (np.all(values == np.round(values))
                                             and len(np.unique(values)) <= MAX_AUTO_CLASSES)
            task = "classification" if classes is not None or categorical else "regression"
    if classes is not None and task != "classification":
        raise DataError(f"classes= is for classification, but the task is {task!r}; drop classes=")
    return task


def _table(columns: dict[str, np.ndarray], targets: tuple[str, ...], feats: tuple[str, ...],
           task: str, classes: Sequence | None, standardize: bool, source: str,
           locate: Locate) -> Table:
    """Builds a Table from whole columns (numbers, strings or Python objects, one array each)."""
    n = len(columns[feats[0]])
    if n == 0:
        raise DataError(f"{source} has no data rows")
    task = _resolve_task(task, targets, columns[targets[0]], classes)
    x = np.stack([_numbers(c, columns[c], "feature", source, locate) for c in feats],
                 axis=1)  # (N, F)
    if standardize:  # this file's own statistics
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)  # a constant feature becomes 0
    found_classes = None
    if task == "classification":
        y, found_classes = _class_labels(targets[0], columns[targets[0]], classes, source, locate)
        y = torch.from_numpy(y)  # (N,) int64
    else:
        y = np.stack([_numbers(c, columns[c], "target", source, locate) for c in targets],
                     axis=1)  # (N, T)
        if task == "multilabel":
            rows, cols = np.nonzero((y != 0) & (y != 1))
            if len(rows):
                row, col = int(rows[0]), int(cols[0])
                raise DataError(f"{source}: multi-label target {targets[col]!r} holds "
                                f"{y[row, col]:g} on {locate(row)}, expected 0 or 1")
        y = torch.from_numpy(y.astype(np.float32))  # (N, T)
        if task == "regression" and len(targets) == 1:
            y = y[:, 0]  # (N,)
    return Table(torch.from_numpy(x.astype(np.float32)), y, feats, targets, found_classes, task)


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{what} {path} not found; check the path (a relative path starts at "
                        f"{Path.cwd()})")
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a {what}")
    return path


# --- readers ----------------------------------------------------------------------------------

def read_csv(path: str | Path, target: str | Sequence[str], *,
             features: Sequence[str] | None = None, task: str = "auto",
             classes: Sequence | None = None, delimiter: str = ",",
             standardize: bool = False) -> Table:
    """Reads a CSV file with a header row into a :class:`Table`.

    Args:
        path: The file; UTF-8 (a byte-order mark is ignored). Blank lines are skipped.
        target: The target column, or a list of columns (several regression targets, or 0/1
            labels with ``task="multilabel"``).
        features: Feature columns, in order (default: every other column, in file order).
        task: ``"auto"``, ``"classification"``, ``"regression"`` or ``"multilabel"``. ``"auto"``
            picks classification when the single target is non-numeric, or integer-valued with at
            most ``MAX_AUTO_CLASSES`` distinct values (or ``classes`` is given); regression
            otherwise, and for a list of targets.
        classes: Classification: every class value in label order. Pass the same list on every
            party so that all parties number labels alike, even one lacking a class. Without it,
            integer labels are used as they are (they must be >= 0) and string labels are
            numbered in sorted order.
        delimiter: The cell separator, e.g. ``";"`` or ``"\\t"``.
        standardize: Scale every feature to mean 0, std 1 with this file's statistics (each
            party then uses its own).

    Returns:
        The table; errors name the column and the line (the header is line 1).

    Raises:
        DataError: A missing file or column, an empty or non-numeric cell, a label not in
            ``classes``, or rows of the wrong length.
    """
    path = _existing(path, "CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise DataError(f"{path} is empty; expected a header line naming the columns, "
                                "then one line per example")
            rows, lines = [], []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}: line {reader.line_num} has {len(row)} cells but the "
                                    f"header (line 1) names {len(header)} columns; check the "
                                    f"delimiter (now {delimiter!r}) and the quoting")
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8 CSV") from exc
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV file: {exc}") from exc
    if len(set(header)) < len(header):
        twice = next(name for name in header if header.count(name) > 1)
        raise DataError(f"{path}: the header names column {twice!r} twice; rename one")
    targets, feats = _select(header, target, features, str(path),
                             f" (read from line 1 with delimiter={delimiter!r})")
    position = {name: j for j, name in enumerate(header)}
    columns = {name: np.array([row[position[name]] for row in rows], dtype=object)
               for name in targets + feats}
    return _table(columns, targets, feats, task, classes, standardize, str(path),
                  lambda i: f"line {lines[i]}")


def read_parquet(path: str | Path, target: str | Sequence[str], *,
                 features: Sequence[str] | None = None, task: str = "auto",
                 classes: Sequence | None = None, standardize: bool = False) -> Table:
    """Reads a Parquet file into a :class:`Table`; needs pyarrow (extra ``parquet``).

    The arguments mean what they mean for :func:`read_csv`; errors name the column and the data
    row (the first is row 1). Only the columns used are read. Null cells count as empty.

    Raises:
        DataError: As for :func:`read_csv`, or a file that is not Parquet.
        MissingExtraError: pyarrow is not installed.
    """
    pyarrow = require("pyarrow", "parquet", "reading Parquet files")
    import pyarrow.parquet as pq

    path = _existing(path, "Parquet file")
    try:
        available = [n for n in pq.read_schema(path).names if not n.startswith("__index_level_")]
        targets, feats = _select(available, target, features, str(path))
        data = pq.read_table(path, columns=list(targets + feats))
    except (OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {exc}") from exc
    columns = {name: data.column(name).to_numpy() for name in targets + feats}
    return _table(columns, targets, feats, task, classes, standardize, str(path),
                  lambda i: f"row {i + 1}")


def _load_npz(path: Path, keys: tuple[str, str]) -> dict[str, object]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds one array, expected an .npz archive of named arrays: "
                            "np.savez(path, x=x, y=y)")
        with archive:  # only the arrays asked for are read
            return {k: (archive[k] if k in keys else None) for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz archive of numeric arrays: {exc}") from exc


def _load_torch(path: Path, keys: tuple[str, str]) -> dict[str, object]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} cannot be loaded with weights_only=True ({first}); save plain "
                        "tensors: torch.save({'x': x, 'y': y}, path)") from exc
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return dict(zip(keys, obj))
    if isinstance(obj, dict):
        return obj
    raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors with keys "
                    f"{keys[0]!r} and {keys[1]!r}, or an (x, y) tuple")


def _load_safetensors(path: Path, keys: tuple[str, str]) -> dict[str, object]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as exc:
        raise DataError(f"{path} is not a readable .safetensors file: {exc}") from exc


_TENSOR_LOADERS = {".npz": _load_npz, ".pt": _load_torch, ".pth": _load_torch,
                   ".safetensors": _load_safetensors}


def _as_tensor(value: object, name: str, path: Path) -> torch.Tensor:
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        value = torch.from_numpy(value.astype(value.dtype.newbyteorder("=")))
    if not isinstance(value, torch.Tensor) or value.is_complex() or value.ndim == 0:
        what = f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
        raise DataError(f"{path}: {name!r} is a {what}, expected a tensor or array of real "
                        "numbers with one row per example")
    return value.detach().cpu().contiguous()


def read_tensors(path: str | Path, *, x: str = "x", y: str = "y") -> Table:
    """Reads inputs and targets saved as tensors into a :class:`Table`.

    Reads ``.npz`` (``np.savez``, no pickles), ``.pt``/``.pth`` (``torch.save`` of a dict of
    tensors or of an ``(x, y)`` tuple, loaded with ``weights_only=True``) and ``.safetensors``.
    ``x`` keeps its shape and becomes float32 (values are not rescaled). The task follows y's
    dtype: integer (or bool) ``(N,)`` is classification (labels >= 0, used as they are), integer
    ``(N, T)`` of 0/1 is multi-label, floating point is regression.

    Args:
        path: The file.
        x: Key of the inputs.
        y: Key of the targets.

    Raises:
        DataError: An unknown suffix, a missing key (the message lists the keys found) or
            unusable values.
    """
    path = _existing(path, "tensor file")
    loader = _TENSOR_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{path}: unknown suffix {path.suffix!r}; read_tensors reads "
                        f"{', '.join(TENSOR_SUFFIXES)} (use read_csv or read_parquet for tables)")
    found = loader(path, (x, y))
    for key in (x, y):
        if key not in found:
            raise DataError(f"{path} has no {key!r}; it holds: "
                            f"{', '.join(map(repr, found)) or 'nothing'}. Pass x=... and y=... "
                            "naming the inputs and the targets")
    xs, ys = _as_tensor(found[x], x, path), _as_tensor(found[y], y, path)
    if len(xs) != len(ys):
        raise DataError(f"{path}: {x!r} has {len(xs)} rows but {y!r} has {len(ys)}")
    if ys.ndim > 2:
        raise DataError(f"{path}: {y!r} has shape {tuple(ys.shape)}, expected (N,) or (N, T)")
    names = (y,) if ys.ndim == 1 else tuple(f"{y}[{j}]" for j in range(ys.shape[1]))
    features = tuple(f"{x}[{i}]" for i in range(xs.shape[1])) if xs.ndim == 2 else ()
    if ys.is_floating_point():
        return Table(xs.float(), ys.float(), features, names, None, "regression")
    ys = ys.long()
    if ys.ndim == 2:
        if not ((ys == 0) | (ys == 1)).all():
            raise DataError(f"{path}: integer {y!r} of shape {tuple(ys.shape)} is read as "
                            "multi-label and must hold only 0 and 1; save class labels as (N,)")
        return Table(xs.float(), ys.float(), features, names, None, "multilabel")
    if len(ys) and ys.min() < 0:
        raise DataError(f"{path}: {y!r} holds the label {int(ys.min())}; class labels must be "
                        ">= 0 (number the classes 0, 1, ...)")
    classes = tuple(range(int(ys.max()) + 1)) if len(ys) else ()
    return Table(xs.float(), ys, features, names, classes, "classification")


# --- images -----------------------------------------------------------------------------------

def _images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden ones skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _channel_stats(mean: Sequence[float] | None, std: Sequence[float] | None,
                   channels: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if (mean is None) != (std is None):
        raise DataError("pass mean= and std= together (one value per channel), or neither")
    if mean is None:
        return None, None
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if len(mean_t) != channels or len(std_t) != channels:
        raise DataError(f"mean= and std= need {channels} value(s), one per channel "
                        f"({'grayscale' if channels == 1 else 'RGB'}), got {len(mean_t)} and "
                        f"{len(std_t)}")
    if not (std_t > 0).all():
        raise DataError(f"std= must be positive, got {std!r}")
    return mean_t, std_t


class ImageFolder(torch.utils.data.Dataset):
    """Images in ``root/<class name>/``, each read from disk when it is indexed.

    Image files end in .png, .jpg, .jpeg, .bmp, .gif or .webp (any case). Nothing is held in
    memory, so sets larger than memory work through a ``DataLoader`` with workers. Needs Pillow
    (extra ``images``).

    Args:
        root: The folder holding one sub-folder per class (searched recursively).
        classes: Every class (folder name) in label order; pass the same list on every party so
            that all number labels alike, even one lacking a class. Default: the sub-folders
            found, sorted by name.
        size: ``(H, W)`` to resize every image to (bilinear); default: as stored.
        grayscale: One channel (luminance) instead of RGB.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel std divided by after that.

    Attributes:
        classes: The class names in label order.
        samples: ``(path, label)`` of every image.

    Raises:
        DataError: A missing root, no images, or a folder not listed in ``classes``.
        MissingExtraError: Pillow is not installed.
    """

    def __init__(self, root: str | Path, *, classes: Sequence | None = None,
                 size: tuple[int, int] | None = None, grayscale: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        require("PIL", "images", "reading image folders")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder {root} not found; expected {root}/<class name>/<images>")
        folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if classes is None:
            classes = sorted(folders)
        else:
            index = _class_index(classes, str)
            extra = sorted(name for name in folders if name not in index)
            if extra:
                raise DataError(f"{root}: folder {extra[0]!r} is not one of "
                                f"classes={list(classes)!r}; add it to classes (the same list on "
                                f"every party) or move it out of {root}")
        if size is not None and (not isinstance(size, (tuple, list)) or len(size) != 2 or not
                                 all(isinstance(s, int) and s > 0 for s in size)):
            raise DataError(f"size must be (height, width) in pixels, got {size!r}")
        self.root = root
        self.classes = tuple(classes)
        self.samples = [(path, label) for label, name in enumerate(self.classes)
                        if str(name) in folders for path in _images(folders[str(name)])]
        if not self.samples:
            raise DataError(f"{root} holds no images: expected {root}/<class name>/<image> with "
                            f"suffix {', '.join(IMAGE_SUFFIXES)}; sub-folders found: "
                            f"{', '.join(sorted(folders)) or 'none'}")
        self.size = tuple(size) if size is not None else None
        self.grayscale = bool(grayscale)
        self.mean, self.std = _channel_stats(mean, std, 1 if grayscale else 3)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Returns image ``index`` as ``(C, H, W)`` float32 and its label."""
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.grayscale else "RGB")
                if self.size is not None:
                    image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)  # (H, W) or (H, W, 3)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path} is not a readable image: {exc}") from exc
        x = torch.from_numpy(pixels.astype(np.float32) / np.float32(255))
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1).contiguous()  # (C, H, W) in [0, 1]
        if self.mean is not None:
            x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return x, label


def load_image_folder(root: str | Path, *, classes: Sequence | None = None,
                      size: tuple[int, int] | None = None, grayscale: bool = False,
                      mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> Table:
    """Reads a whole :class:`ImageFolder` into memory, for small sets.

    The arguments are :class:`ImageFolder`'s. The table's ``x`` is 4-d, ``(N, C, H, W)``
    float32, and ``feature_names`` is empty; every image must have the same size (or pass
    ``size``).

    Raises:
        DataError: As for :class:`ImageFolder`, or images of different sizes without ``size``.
    """
    folder = ImageFolder(root, classes=classes, size=size, grayscale=grayscale, mean=mean, std=std)
    images, labels = [], []
    for i, (path, _) in enumerate(folder.samples):
        x, label = folder[i]
        if images and x.shape != images[0].shape:
            raise DataError(f"{path} is {x.shape[1]}x{x.shape[2]} but {folder.samples[0][0]} is "
                            f"{images[0].shape[1]}x{images[0].shape[2]}; pass size=(H, W) to "
                            "resize every image")
        images.append(x)
        labels.append(label)
    return Table(torch.stack(images), torch.tensor(labels, dtype=torch.int64), (), ("class",),
                 folder.classes, "classification")  # x: (N, C, H, W)
