"""Per-party shards on disk: what one party receives, and the partition report beside them.

Layout written by :func:`write_shards`::

    out/
      partition.md          scheme, seed and the label histogram as a markdown table
      histogram.csv         party, n, class_0 ... class_{C-1}
      party{i}/
        data.safetensors    x (n, *input_shape) float32, y (n,) int64
        meta.json           dataset, num_classes, input_shape, party, n, scheme, seed,
                            params, label_counts

A party gets only its own training shard, never the test set. (This module is not named
``shards`` so that it does not clash with the :func:`pollen.data.shards` partitioner.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from pollen.data.dataset import Dataset
from pollen.data.partition import format_histogram, label_histogram
from pollen.errors import DataError

DATA_FILE = "data.safetensors"
META_FILE = "meta.json"
_PARTY_DIR = re.compile(r"party(\d+)")


def _clear_stale(out: Path, parties: int) -> None:
    """Removes the files of ``party{j}`` folders with ``j >= parties`` left by an earlier run."""
    for folder in out.iterdir():
        match = _PARTY_DIR.fullmatch(folder.name)
        if folder.is_dir() and match and int(match.group(1)) >= parties:
            for name in (DATA_FILE, META_FILE):
                (folder / name).unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()


def write_shards(dataset: Dataset, parts: list[np.ndarray], out_dir: str | Path, *, scheme: str,
                 seed: int, params: Mapping[str, object] | None = None,
                 overwrite: bool = False) -> Path:
    """Writes one training shard per party plus the partition report.

    Args:
        dataset: The dataset that was partitioned.
        parts: One index array into ``dataset``'s training set per party.
        out_dir: Output folder; created if needed.
        scheme: Partition scheme name, recorded in the metadata.
        seed: Partition seed, recorded in the metadata.
        params: Other partition parameters worth recording (e.g. ``{"alpha": 0.5}``).
        overwrite: Allow writing into a non-empty folder; ``party{j}`` folders beyond
            ``len(parts)`` from an earlier run are then removed.

    Returns:
        ``out_dir``, holding ``party0`` ... ``party{len(parts) - 1}``.

    Raises:
        DataError: An index is out of range, or ``out_dir`` is not empty and ``overwrite`` is
            False.
    """
    out = Path(out_dir)
    n_train = len(dataset.y_train)
    for i, part in enumerate(parts):
        if len(part) and (np.min(part) < 0 or np.max(part) >= n_train):
            raise DataError(f"party {i}'s indices span [{np.min(part)}, {np.max(part)}], outside "
                            f"the {n_train} training examples of {dataset.name!r}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} is not empty; choose an empty folder or pass overwrite=True")
        _clear_stale(out, len(parts))
    hist = label_histogram(dataset.y_train, parts, dataset.num_classes)  # (parties, classes)
    for i, part in enumerate(parts):
        folder = out / f"party{i}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"x": np.ascontiguousarray(dataset.x_train[part]),
                   "y": np.ascontiguousarray(dataset.y_train[part]),
                   # original training-set indices: lets a deployed party order its examples
                   # exactly as the simulation does (same batches, same result)
                   "index": np.ascontiguousarray(part, dtype=np.int64)}, str(folder / DATA_FILE))
        meta = {"dataset": dataset.name, "num_classes": dataset.num_classes,
                "input_shape": list(dataset.input_shape), "party": i, "n": len(part),
                "scheme": scheme, "seed": seed, "params": dict(params or {}),
                "label_counts": hist[i].tolist()}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    _write_report(out, dataset, hist, scheme, seed, dict(params or {}))
    return out


def _write_report(out: Path, dataset: Dataset, hist: np.ndarray, scheme: str, seed: int,
                  params: dict[str, object]) -> None:
    header = ",".join(["party", "n", *(f"class_{c}" for c in range(hist.shape[1]))])
    rows = [",".join(map(str, [i, int(row.sum()), *row.tolist()])) for i, row in enumerate(hist)]
    (out / "histogram.csv").write_text("\n".join([header, *rows]) + "\n")
    extra = "".join(f", {k}={v}" for k, v in params.items())
    (out / "partition.md").write_text(
        f"# Partition of {dataset.name}\n\n"
        f"scheme={scheme}, seed={seed}{extra}, parties={len(hist)}, "
        f"examples={int(hist.sum())} of {len(dataset.y_train)}\n\n"
        f"{format_histogram(hist)}"
    )


def read_shard_meta(path: str | Path) -> dict[str, object]:
    """A shard's ``meta.json`` (dataset, input_shape, num_classes, …) without reading its tensors.

    Raises:
        DataError: the file is missing or not shard metadata.
    """
    folder = Path(path)
    meta_path = (folder.parent if folder.name == DATA_FILE else folder) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{meta_path} is missing or not valid JSON ({exc}); write the shards again") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("input_shape"), list):
        raise DataError(f"{meta_path} is not shard metadata (no input_shape); write the shards again")
    return meta


def read_shard(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Reads one party's shard.

    Args:
        path: The ``party{i}`` folder (or its ``data.safetensors``).

    Returns:
        ``(x, y, meta)``: inputs ``(n, *input_shape)`` float32, labels ``(n,)`` int64 and the
        metadata written by :func:`write_shards`.

    Raises:
        DataError: A file is missing or corrupt, or data and metadata disagree.
    """
    folder = Path(path)
    if folder.name == DATA_FILE:
        folder = folder.parent
    data_path, meta_path = folder / DATA_FILE, folder / META_FILE
    for needed in (data_path, meta_path):
        if not needed.is_file():
            raise DataError(f"shard file {needed} not found; write the shards with "
                            "`write_shards` (or `pollen partition`) and pass the party folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{meta_path} is not valid JSON ({exc}); write the shards again") from exc
    try:
        tensors = load_file(str(data_path))
    except (OSError, SafetensorError) as exc:
        raise DataError(f"{data_path} is corrupt ({exc}); write the shards again") from exc
    x, y = tensors.get("x"), tensors.get("y")
    if x is None or y is None:
        raise DataError(f"{data_path} lacks tensor 'x' or 'y' (found {sorted(tensors)})")
    if not isinstance(meta, dict) or not isinstance(meta.get("input_shape"), list):
        raise DataError(f"{meta_path} is not shard metadata (no input_shape); write the shards "
                        "again")
    expected = (meta.get("n"), *meta["input_shape"])
    if x.shape != expected or y.shape != (len(x),):
        raise DataError(f"{data_path} holds x {x.shape} and y {y.shape} but {meta_path} "
                        f"declares x {expected}; write the shards again")
    return x, y, meta
