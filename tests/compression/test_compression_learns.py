"""A short simulation with each codec still learns (digits, 4 IID parties, 6 rounds, seed 0).

Stated accuracies (measured on this machine, torch 2.13 CPU) are in the comments of ``FLOOR``;
the floors leave about five points for other platforms. A codec that broke decoding would sit
at chance (0.1).
"""

from __future__ import annotations

import pytest

from pollen.simulation import simulate

ROUNDS = 6

# codec config -> accuracy the run must reach after ROUNDS rounds
FLOOR = {
    "none": ({}, 0.83),  # measured 0.883
    "fp16": ({"codec": "fp16"}, 0.83),  # 0.883
    "bf16": ({"codec": "bf16"}, 0.83),  # 0.881
    "int8": ({"codec": "int8", "codec_block": 256}, 0.83),  # 0.881
    "qsgd": ({"codec": "qsgd", "qsgd_bits": 4}, 0.83),  # 0.881
    "terngrad": ({"codec": "terngrad"}, 0.83),  # 0.892
    "sign-ef": ({"codec": "sign", "codec_block": 256, "error_feedback": True}, 0.80),  # 0.850
    "topk10-ef": ({"codec": "topk", "topk_fraction": 0.1, "error_feedback": True}, 0.80),  # 0.858
    "topk1-ef": ({"codec": "topk", "topk_fraction": 0.01, "error_feedback": True}, 0.55),  # 0.647
    "prune-fp16": ({"prune": "magnitude", "prune_fraction": 0.3, "topk_values": "fp16"}, 0.80),  # 0.872
    "downlink-int8": ({"downlink": "int8", "codec": "int8"}, 0.83),  # 0.883
}


@pytest.mark.parametrize("name", list(FLOOR))
def test_short_simulation_learns(digits_cfg, name):
    compression, floor = FLOOR[name]
    cfg = digits_cfg(compression=compression, federation={"rounds": ROUNDS}, data={"holdout": 0.0},
                     simulation={"threads": 1})
    h = simulate(cfg).history
    acc = h[-1]["accuracy"]
    print(f"{name}: accuracy {acc:.3f}, uplink {h[-1]['bytes_up']} B, compression {h[-1]['compression_up']:.2f}x")
    assert acc >= floor, f"{name}: accuracy {acc:.3f} < {floor}"
    if compression.get("codec", "none") != "none" or "prune" in compression:
        assert h[-1]["compression_up"] > 1.3
