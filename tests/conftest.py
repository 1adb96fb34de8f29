"""Shared fixtures: small, fast federations on scikit-learn digits."""

from __future__ import annotations

import os

import pytest
import torch

# Tests are many small models: one thread avoids oversubscribing the shared CI machine.
torch.set_num_threads(1)
os.environ.setdefault("POLLEN_TEST", "1")


@pytest.fixture
def digits_cfg(tmp_path):
    """A factory of small digits run configs writing into tmp_path."""
    from pollen.config import make_config, merge

    def make(**sections):
        base = {
            "data": {"dataset": "digits", "parties": 4},
            "federation": {"rounds": 3},
            "run": {"name": "t", "runs_dir": str(tmp_path / "runs"), "progress": False, "seed": 0},
        }
        return make_config(merge(base, sections))

    return make
