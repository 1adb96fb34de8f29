"""Write the clinics' CSV files from scikit-learn's diabetes set (442 patients).

    python make_data.py            # into this folder (the committed files)
    python make_data.py OUT_DIR    # somewhere else

The records are in their original units (``load_diabetes(scaled=False)``: age in years, sex 1/2,
BMI, blood pressure and six blood serum measurements) with the target ``progression``, a measure
of disease progression one year after baseline (25 … 346). A random 20 % (seed 0) becomes the
coordinator's ``test.csv`` (89 patients). The other 353 are cut 4 : 3 : 2 : 1 by a permutation
seeded with 0 into ``clinic_a.csv`` (141), ``clinic_b.csv`` (106), ``clinic_c.csv`` (70) and
``clinic_d.csv`` (36): an IID split with unequal sizes. Values are written as Python's shortest
round-trip text of each number, so the files are byte-identical wherever this runs.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

CLINICS = {"clinic_a.csv": 4, "clinic_b.csv": 3, "clinic_c.csv": 2, "clinic_d.csv": 1}  # proportions 4 : 3 : 2 : 1
TEST_FRACTION = 0.2
SEED = 0


def _write(path: Path, header: list[str], x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header)
        for row, target in zip(x, y):
            out.writerow([repr(float(v)) for v in row] + [repr(float(target))])


def main(out: Path) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes(scaled=False)
    x, y = data.data, data.target  # (442, 10) original units, (442,) progression
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SEED)
    header = [str(name) for name in data.feature_names] + ["progression"]
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "test.csv", header, x_test, y_test)
    order = np.random.default_rng(SEED).permutation(len(x_rest))
    total, start, seen = sum(CLINICS.values()), 0, 0
    for name, share in CLINICS.items():
        seen += share
        stop = len(order) * seen // total
        rows = order[start:stop]
        _write(out / name, header, x_rest[rows], y_rest[rows])
        print(f"{name}: {len(rows)} patients, mean progression {y_rest[rows].mean():.1f}")
        start = stop
    print(f"test.csv: {len(y_test)} patients, mean progression {y_test.mean():.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
