"""Write the hospitals' CSV files from scikit-learn's breast-cancer set (569 records).

    python make_data.py            # into this folder (the committed files)
    python make_data.py OUT_DIR    # somewhere else

A stratified 20 % test split (seed 0) becomes the coordinator's ``test.csv`` (114 records). The
other 455 records are cut 5 : 3 : 2 by a permutation seeded with 0 into ``hospital_a.csv`` (227),
``hospital_b.csv`` (137) and ``hospital_c.csv`` (91). Each file has a header row with the 30
feature names and ``diagnosis``: 1 for malignant, 0 for benign. Values are written as Python's
shortest round-trip text of each number, so the files are byte-identical wherever this runs.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

HOSPITALS = {"hospital_a.csv": 5, "hospital_b.csv": 3, "hospital_c.csv": 2}  # patients in proportions 5 : 3 : 2
TEST_FRACTION = 0.2
SEED = 0


def _write(path: Path, header: list[str], x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header)
        for row, label in zip(x, y):
            out.writerow([repr(float(v)) for v in row] + [int(label)])


def main(out: Path) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x = data.data  # (569, 30) float64
    y = 1 - data.target  # (569,) scikit-learn's 0 = malignant; here 1 = malignant (the disease)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=SEED)
    header = [str(name) for name in data.feature_names] + ["diagnosis"]
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "test.csv", header, x_test, y_test)
    order = np.random.default_rng(SEED).permutation(len(x_rest))
    total, start, seen = sum(HOSPITALS.values()), 0, 0
    for name, share in HOSPITALS.items():
        seen += share
        stop = len(order) * seen // total
        rows = order[start:stop]
        _write(out / name, header, x_rest[rows], y_rest[rows])
        print(f"{name}: {len(rows)} patients, {int(y_rest[rows].sum())} malignant")
        start = stop
    print(f"test.csv: {len(y_test)} patients, {int(y_test.sum())} malignant")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
