"""Per-round configuration: learning-rate schedules, local epochs by round, and loading a user's
config hook ``fn(round, RoundConfig) -> RoundConfig`` from ``path.py:func`` or ``module:func``.

Cosine annealing follows Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm
Restarts" (ICLR), without restarts, indexed by round.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pollen.errors import ConfigError
from pollen.types import RoundConfig

SCHEDULES = ("constant", "step", "exp", "cosine")


@dataclass(frozen=True)
class LrSchedule:
    """The local learning rate of round ``r`` (1-based) from the base rate ``lr``.

    - ``constant``: ``lr``
    - ``exp``: ``lr · γ^(r−1)``
    - ``step``: ``lr · γ^⌊(r−1)/step_rounds⌋``
    - ``cosine``: ``min_lr + (lr − min_lr)(1 + cos(π (r−1)/(T−1)))/2`` over ``T = total_rounds``

    Attributes:
        kind: one of ``constant``, ``step``, ``exp``, ``cosine``.
        gamma: decay factor for ``step`` and ``exp``.
        step_rounds: rounds between decays for ``step``.
        min_lr: the final rate of ``cosine``.
        total_rounds: the rounds ``cosine`` anneals over.
    """

    kind: str = "constant"
    gamma: float = 0.5
    step_rounds: int = 10
    min_lr: float = 0.0
    total_rounds: int = 1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"lr schedule {self.kind!r} is unknown; choose one of: {', '.join(SCHEDULES)}")
        if self.step_rounds < 1 or self.total_rounds < 1:
            raise ConfigError(f"lr schedule needs step_rounds ≥ 1 and total_rounds ≥ 1; got {self.step_rounds}, {self.total_rounds}")

    def lr(self, base: float, round: int) -> float:
        """The learning rate of ``round`` starting from ``base``."""
        r = max(round, 1) - 1
        if self.kind == "exp":
            return base * self.gamma**r
        if self.kind == "step":
            return base * self.gamma ** (r // self.step_rounds)
        if self.kind == "cosine":
            progress = min(r / max(self.total_rounds - 1, 1), 1.0)
            return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2
        return base


def parse_epochs_schedule(text: str | None) -> tuple[tuple[int, int], ...]:
    """``"1:1,10:2,20:3"`` → ``((1, 1), (10, 2), (20, 3))``: from round 10 on, 2 local epochs, ….

    Raises:
        ConfigError: a piece that is not ``round:epochs`` with positive integers.
    """
    if not text:
        return ()
    out = []
    for piece in text.split(","):
        try:
            start, epochs = (int(s) for s in piece.strip().split(":"))
        except ValueError:
            raise ConfigError(f"epochs schedule piece {piece!r} is not 'round:epochs' (e.g. '1:1,10:2')") from None
        if start < 1 or epochs < 1:
            raise ConfigError(f"epochs schedule piece {piece!r}: round and epochs must be ≥ 1")
        out.append((start, epochs))
    return tuple(sorted(out))


def epochs_for(schedule: tuple[tuple[int, int], ...], round: int, default: int) -> int:
    """Local epochs of ``round`` under ``schedule`` (``default`` before its first entry)."""
    epochs = default
    for start, e in schedule:
        if round >= start:
            epochs = e
    return epochs


ConfigHook = Callable[[int, RoundConfig], RoundConfig]


def load_config_hook(spec: str) -> ConfigHook:
    """Load ``fn`` from ``path/to/file.py:fn`` or ``package.module:fn``.

    Raises:
        ConfigError: a spec without ``:``, a missing file or module, or a name that is not callable.
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(f"config hook {spec!r} must be 'path/to/file.py:function' or 'module:function'")
    if where.endswith(".py") or Path(where).exists():
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"config hook file {path} does not exist")
        loader_spec = importlib.util.spec_from_file_location(f"pollen_config_hook_{path.stem}", path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"config hook file {path} cannot be imported as Python")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigError(f"config hook module {where!r} cannot be imported: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"config hook {spec!r}: {where} has no function {name!r}")
    return fn
