"""What a benchmark prints about the machine it ran on (shared by the benchmarks)."""

from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def thread_scaling() -> str:
    """The same matmuls with 1 and with every thread (BENCHMARKS.md: a fresh machine can be slow on 2)."""
    import torch

    a = torch.randn(1024, 1024)
    out = []
    for n in (1, os.cpu_count() or 1):
        torch.set_num_threads(n)
        t = time.perf_counter()
        for _ in range(20):
            a @ a
        out.append(f"{n} thread(s): {time.perf_counter() - t:.2f}s")
    return ", ".join(out)
