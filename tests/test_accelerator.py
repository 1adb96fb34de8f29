"""Training on an accelerator gives what the CPU gives: augmentation, DP-SGD (noise drawn on the
parameters' device) and a whole federated run with compression and DP.

Each test runs once per accelerator torch sees here (CUDA); on a machine without one they are
skipped, not passed: CI has no GPU, the device machine of a session runs them.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from pollen.models.augment import cifar_augment, normalize
from pollen.privacy.dpsgd import dp_train, secure_generator
from pollen.types import RoundConfig

ACCELERATORS = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                              reason="needs a CUDA device"))]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


@pytest.mark.parametrize("device", ACCELERATORS)
def test_augmentation_on_the_device_equals_the_cpu(device):
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    on_cpu = cifar_augment(x, torch.Generator().manual_seed(1))
    on_dev = cifar_augment(x.to(device), torch.Generator().manual_seed(1))  # CPU generator, batch on the device
    assert on_dev.device.type == device
    torch.testing.assert_close(on_dev.cpu(), on_cpu, rtol=0, atol=0)
    torch.testing.assert_close(normalize(x.to(device), [0.5] * 3, [0.2] * 3).cpu(), normalize(x, [0.5] * 3, [0.2] * 3))


@pytest.mark.parametrize("device", ACCELERATORS)
def test_dp_sgd_on_the_device_equals_the_cpu_without_noise(device):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)
    batches = list(torch.randperm(96, generator=torch.Generator().manual_seed(1)).split(16))
    cfg = RoundConfig(lr=0.1, batch_size=16, momentum=0.5)
    on_cpu, on_dev = _net(), _net().to(device)
    a = dp_train(on_cpu, x, y, batches, cfg, 0.0, 0.5, 16, secure_generator())
    b = dp_train(on_dev, x.to(device), y.to(device), batches, cfg, 0.0, 0.5, 16, secure_generator(device))
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert b["train_accuracy"] == a["train_accuracy"]
    for (name, p), q in zip(on_cpu.state_dict().items(), on_dev.state_dict().values()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("device", ACCELERATORS)
def test_dp_sgd_noise_and_empty_batches_on_the_device(device):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8, generator=g).to(device), torch.randint(0, 10, (96,), generator=g).to(device)
    net = _net().to(device)
    before = copy.deepcopy(net.state_dict())
    out = dp_train(net, x, y, [torch.zeros(0, dtype=torch.long), torch.arange(16)], RoundConfig(lr=0.1), 1.0, 1.0,
                   16, secure_generator(device))
    assert math.isfinite(out["train_loss"]) and out["steps"] == 2
    assert not torch.equal(before["3.weight"], net.state_dict()["3.weight"])


@pytest.mark.parametrize("device", ACCELERATORS)
def test_a_federated_run_on_the_device_learns_as_on_the_cpu(device, tmp_path):
    import pollen

    common = dict(dataset="digits", model="small_cnn", parties=3, rounds=3, epochs=1, progress=False,
                  runs_dir=str(tmp_path), overwrite=True)
    on_cpu = pollen.simulate(name="cpu", device="cpu", **common)
    on_dev = pollen.simulate(name="dev", device=device, **common)
    assert on_dev.history[-1]["accuracy"] == pytest.approx(on_cpu.history[-1]["accuracy"], abs=0.05)
    assert on_dev.history[-1]["accuracy"] > 0.5  # 10 classes
    squeezed = pollen.simulate(name="topk", device=device, codec="topk", topk_fraction=0.1, error_feedback=True,
                               downlink="int8", **common)
    assert math.isfinite(squeezed.history[-1]["loss"])
    assert squeezed.history[-1]["bytes_up"] < on_dev.history[-1]["bytes_up"] / 3
    dp = pollen.simulate(name="dp", device=device, dp_sgd=True, target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0,
                         **common)
    assert 0 < dp.history[-1]["epsilon"] <= 8.0
    assert math.isfinite(dp.history[-1]["loss"])
