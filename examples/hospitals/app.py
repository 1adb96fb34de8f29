"""Three hospitals train one disease classifier without pooling their patients' records.

Hospitals A, B and C hold 227, 137 and 91 breast-cancer records (proportions 5 : 3 : 2; see
make_data.py). Each runs ``load_data`` on its own CSV file only; the coordinator evaluates the
global model on ``test.csv``. The contract of every function here is in docs/app.md.

    pollen simulate --app app.py                    # the three hospitals on this machine
    pollen client --party-id 0 --app app.py --data hospital_a.csv …   # one hospital, deployed (README.md)
"""

from __future__ import annotations

from pathlib import Path

import torch

from pollen.data import read_csv
from pollen.errors import ConfigError

HERE = Path(__file__).resolve().parent
SITES = ("hospital_a.csv", "hospital_b.csv", "hospital_c.csv")  # simulated party 0, 1, 2
TARGET = "diagnosis"  # 1 = malignant, 0 = benign

# Feature scaling. Every hospital must scale a feature the same way, or the shared model would read
# "1.0" as a different measurement at each site. read_csv(standardize=True) would use each file's own
# mean and std (a hospital cannot see the others'), so the scaling would differ from site to site and
# a new patient could not be scaled at all. Instead every site uses the same fixed constants: the
# published range (min, max) of each measurement from the data set's description (UCI Breast Cancer
# Wisconsin (Diagnostic); scikit-learn's DESCR), mapped to [-1, 1]. No site's statistics are needed.
RANGES = {
    "mean radius": (6.981, 28.11), "mean texture": (9.71, 39.28), "mean perimeter": (43.79, 188.5),
    "mean area": (143.5, 2501.0), "mean smoothness": (0.053, 0.163), "mean compactness": (0.019, 0.345),
    "mean concavity": (0.0, 0.427), "mean concave points": (0.0, 0.201), "mean symmetry": (0.106, 0.304),
    "mean fractal dimension": (0.05, 0.097),
    "radius error": (0.112, 2.873), "texture error": (0.36, 4.885), "perimeter error": (0.757, 21.98),
    "area error": (6.802, 542.2), "smoothness error": (0.002, 0.031), "compactness error": (0.002, 0.135),
    "concavity error": (0.0, 0.396), "concave points error": (0.0, 0.053), "symmetry error": (0.008, 0.079),
    "fractal dimension error": (0.001, 0.03),
    "worst radius": (7.93, 36.04), "worst texture": (12.02, 49.54), "worst perimeter": (50.41, 251.2),
    "worst area": (185.2, 4254.0), "worst smoothness": (0.071, 0.223), "worst compactness": (0.027, 1.058),
    "worst concavity": (0.0, 1.252), "worst concave points": (0.0, 0.291), "worst symmetry": (0.156, 0.664),
    "worst fractal dimension": (0.055, 0.208),
}
FEATURES = tuple(RANGES)  # read in this order whatever a site's column order
_LOW = torch.tensor([lo for lo, _ in RANGES.values()])  # (30,)
_SPAN = torch.tensor([hi - lo for lo, hi in RANGES.values()])  # (30,)


def model() -> torch.nn.Module:
    """A small MLP: 30 measurements → one logit of malignancy."""
    return torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 1),  # (N, 1) logits
    )


loss = torch.nn.BCEWithLogitsLoss()  # logits (N, 1) against float targets (N, 1)
metrics = ["auc", "f1", "accuracy"]
primary_metric = "auc"


def read_records(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CSV file as ``(x, y)``: scaled features ``(N, 30)`` and float diagnoses ``(N, 1)``."""
    table = read_csv(path, target=TARGET, features=FEATURES, classes=[0, 1], standardize=False)
    x = (table.x - _LOW) / _SPAN * 2 - 1  # (N, 30), the published range → [-1, 1]
    y = table.y.float().unsqueeze(1)  # (N, 1), shaped like the model's logits
    return x, y


def load_data(ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """This hospital's records, and nobody else's.

    Deployed, ``ctx.data_path`` is the hospital's own file (``pollen client --data hospital_a.csv``).
    Simulated (no ``--data-dir``), party 0, 1, 2 reads hospital_a/b/c.csv beside this file. Pollen
    holds out ``--holdout`` (20 %) of each hospital's records for federated evaluation.
    """
    if ctx.data_path is not None:
        return read_records(ctx.data_path)
    if ctx.num_parties != len(SITES) or ctx.party_index >= len(SITES):
        raise ConfigError(f"this example has {len(SITES)} hospitals ({', '.join(SITES)}); simulate it with "
                          f"--parties {len(SITES)}, not {ctx.num_parties}")
    return read_records(HERE / SITES[ctx.party_index])


def server_data(ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinator's held-out patients, never used for training."""
    return read_records(HERE / "test.csv")


config = {
    "data": {"parties": 3, "holdout": 0.2},
    "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 32, "epochs": 1},
    "federation": {"rounds": 30},
}
