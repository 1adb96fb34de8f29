"""Four clinics fit one regression model of diabetes progression without pooling their records.

Clinics A, B, C and D hold 141, 106, 70 and 36 patients (see make_data.py); each reads only its
own CSV file, and the coordinator measures the global model on ``test.csv``. The contract of
every function here is in docs/app.md.

    pollen simulate --app app.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from pollen.data import read_csv
from pollen.errors import ConfigError

HERE = Path(__file__).resolve().parent
SITES = ("clinic_a.csv", "clinic_b.csv", "clinic_c.csv", "clinic_d.csv")  # simulated party 0 … 3
TARGET = "progression"

# Feature scaling: (centre, spread) of each measurement, fixed before training and the same at every
# clinic and for every new patient; read_csv(standardize=True) would use each clinic's own statistics,
# a different scale at each site. These are round reference values for this adult population, close to
# the means and standard deviations published with the data (Efron et al., "Least Angle Regression",
# 2004); no clinic's statistics are needed.
REFERENCE = {
    "age": (50.0, 13.0), "sex": (1.5, 0.5), "bmi": (26.0, 4.4), "bp": (95.0, 14.0), "s1": (190.0, 35.0),
    "s2": (115.0, 30.0), "s3": (50.0, 13.0), "s4": (4.0, 1.3), "s5": (4.6, 0.5), "s6": (91.0, 11.5),
}
FEATURES = tuple(REFERENCE)
_CENTRE = torch.tensor([c for c, _ in REFERENCE.values()])  # (10,)
_SPREAD = torch.tensor([s for _, s in REFERENCE.values()])  # (10,)

# The target is left in its own units (no scaling): the model is linear in the scaled features, so
# the size of the target changes the loss values but not the step size SGD can take, and MAE/RMSE
# then read in units of disease progression, comparable with predicting the mean.


def model() -> torch.nn.Module:
    """Linear regression: 10 scaled measurements → progression."""
    return torch.nn.Linear(len(FEATURES), 1)  # (N, 1)


loss = torch.nn.MSELoss()  # outputs (N, 1) against float targets (N, 1)
metrics = ["mae", "rmse", "r2"]
primary_metric = "mae"  # lower is better (known from the metric)


def read_records(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CSV file as ``(x, y)``: scaled features ``(N, 10)`` and progression ``(N, 1)``."""
    table = read_csv(path, target=TARGET, features=FEATURES, task="regression")
    x = (table.x - _CENTRE) / _SPREAD  # (N, 10)
    y = table.y.float().unsqueeze(1)  # (N, 1), shaped like the model's outputs
    return x, y


def load_data(ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """This clinic's records: ``ctx.data_path`` when deployed, clinic_a … d.csv when simulated."""
    if ctx.data_path is not None:
        return read_records(ctx.data_path)
    if ctx.num_parties != len(SITES) or ctx.party_index >= len(SITES):
        raise ConfigError(f"this example has {len(SITES)} clinics ({', '.join(SITES)}); simulate it with "
                          f"--parties {len(SITES)}, not {ctx.num_parties}")
    return read_records(HERE / SITES[ctx.party_index])


def server_data(ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinator's held-out patients, never used for training."""
    return read_records(HERE / "test.csv")


config = {
    "data": {"parties": len(SITES), "holdout": 0.2},
    "train": {"lr": 0.05, "batch_size": 32},
    "federation": {"rounds": 30},
}
