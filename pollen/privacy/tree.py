"""DP-FTRL: party-level DP without random sampling, by tree aggregation of the rounds' sums.

Kairouz, McMahan, Song, Thakkar, Thakurta, Xu, "Practical and Private (Deep) Learning without
Sampling or Shuffling" (ICML 2021, arXiv:2103.00039); the method behind Gboard's production
models (Xu et al., "Federated Learning of Gboard Language Models with Differential Privacy", ACL
2023). Instead of noising each round's sum independently and leaning on amplification by random
sampling (which a real federation cannot verify), the coordinator releases *prefix sums* of the
rounds' clipped updates through the binary tree mechanism (Dwork et al. 2010; Chan, Shi, Song
2011): every node of a binary tree over the rounds holds fresh Gaussian noise N(0, σ²), and the
prefix sum up to round t carries the noise of the ≤ ⌈log₂ t⌉ + 1 nodes that cover [1, t]. The
model after round t is a function of the noisy prefix sum (FTRL), so any server optimizer on the
differences of consecutive noisy prefix sums is post-processing.

Accounting (Appendix D of the paper; TF-Privacy ``tree_aggregation_accountant.py``):

- *tree restart* (what Pollen runs): a new tree every epoch, an epoch being the rounds in which
  every party takes part at most once (Pollen's balanced sampler). A party's one leaf lies under
  ⌊log₂ T_e⌋ + 1 nodes of an epoch of T_e rounds, so the epochs together are a Gaussian with
  Σ_e (⌊log₂ T_e⌋ + 1) · Δ²/σ² in place of Δ²/σ²: RDP α Σ_e depth_e / (2 z²).
- *single tree*: one tree for the whole run, a party taking part at most ``max_participation``
  times, at least ``min_separation`` rounds apart; the worst-case Σ of squared sensitivities over
  the nodes is found by the paper's dynamic programme (``tree_sensitivity_squared``).

z is the node noise std over one party's sensitivity; Pollen's replace-one adjacency gives a
clipped update sensitivity 2C, so the accountant runs at z/2 like the other party-level modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from pollen.privacy.rdp import DEFAULT_ORDERS, rdp_to_epsilon


def tree_depth(steps: int) -> int:
    """Nodes of a binary tree over ``steps`` leaves that contain any one leaf: ⌊log₂ steps⌋ + 1."""
    return int(math.floor(math.log2(steps))) + 1 if steps > 0 else 0


def rdp_tree_restart(noise_multiplier: float, steps_per_tree: Sequence[int],
                     orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP of tree aggregation restarted every epoch, one participation per party per tree.

    Args:
        noise_multiplier: node noise std / one contribution's L2 sensitivity.
        steps_per_tree: leaves (rounds) of each tree.
        orders: RDP orders.
    """
    if noise_multiplier <= 0:
        return np.full(len(orders), np.inf)
    total = sum(tree_depth(int(s)) for s in steps_per_tree)
    return np.asarray(orders, dtype=np.float64) * total / (2 * noise_multiplier ** 2)


def _possible(participations: int, separation: int, start: int, end: int, steps: int) -> bool:
    return start + (separation + 1) * participations <= steps + end


@lru_cache(maxsize=None)
def _worst_sum(participations: int, separation: int, start: int, end: int, size: int) -> float:
    """Largest Σ over nodes of (contributions in the node)² for ``participations`` leaves in a
    tree of ``size`` leaves, the first after ``start`` leaves, none in the ``end`` leaves after
    it, consecutive ones at least ``separation`` leaves apart (Appendix D.2's recursion)."""
    if not _possible(participations, separation, start, end, size):
        return -math.inf
    if participations == 0:
        return 0.0
    if participations == 1 and size == 1:
        return 1.0
    top = math.floor(math.log2(size))
    value = 0.0
    if 2 ** top == size:  # a full tree: its root holds every participation
        value = float(participations ** 2)
        top -= 1
    best = -math.inf
    for right in range(participations + 1):
        for gap in range(separation + 1):
            left = _worst_sum(participations - right, separation, start, gap, 2 ** top)
            if left == -math.inf:
                continue
            best = max(best, left + _worst_sum(right, separation, gap, end, size - 2 ** top))
    return value + best


def tree_sensitivity_squared(max_participation: int, min_separation: int, steps: int) -> float:
    """Worst-case Σ of squared per-node sensitivities (in units of one contribution) of a single
    tree of ``steps`` leaves (Kairouz et al. 2021, Appendix D.2)."""
    n = max_participation
    while n > 0 and not _possible(n, min_separation, 0, min_separation, steps):
        n -= 1
    return max((_worst_sum(k, min_separation, 0, min_separation, steps) for k in range(1, n + 1)), default=0.0)


def rdp_single_tree(noise_multiplier: float, steps: int, max_participation: int, min_separation: int,
                    orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP of one tree over the whole run (no restart)."""
    if noise_multiplier <= 0:
        return np.full(len(orders), np.inf)
    s = tree_sensitivity_squared(max_participation, min_separation, steps)
    return np.asarray(orders, dtype=np.float64) * s / (2 * noise_multiplier ** 2)


def ftrl_epsilon(noise_multiplier: float, steps_per_tree: Sequence[int], delta: float) -> float:
    """(ε at ``delta``) of tree aggregation with restarts (noise multiplier against the sensitivity)."""
    return rdp_to_epsilon(DEFAULT_ORDERS, rdp_tree_restart(noise_multiplier, steps_per_tree), delta)[0]


def epochs(rounds: int, rounds_per_epoch: int) -> list[int]:
    """Leaves of each restarted tree: full epochs, then what is left."""
    full, rest = divmod(rounds, rounds_per_epoch)
    return [rounds_per_epoch] * full + ([rest] if rest else [])


class TreeNoise:
    """The noise of the binary tree mechanism for a stream of rounds, restarted on demand.

    The node at level ℓ with index j covers leaves (j−1)·2^ℓ + 1 … j·2^ℓ; the prefix [1, t] is
    covered by one node per set bit ℓ of t, the one with index t >> ℓ. Each node's noise is drawn
    once, when first needed, and dropped once no later prefix uses it, so at most one node per
    level is kept. ``next(like)`` returns noise(t) − noise(t−1): adding the increments of rounds
    1…t to the round sums gives the noisy prefix sum of round t.

    Args:
        std: node noise standard deviation.
        draw: ``draw(std, like)`` → Gaussian arrays shaped like ``like`` (from a CSPRNG-seeded source).
    """

    def __init__(self, std: float, draw: Callable[[float, dict[str, np.ndarray]], dict[str, np.ndarray]]) -> None:
        self.std = std
        self.draw = draw
        self.restart()

    def restart(self) -> None:
        """Start a new tree (a new epoch); its prefix sums start from zero."""
        self.t = 0  # leaves released in the current tree
        self.nodes: dict[int, tuple[int, dict[str, np.ndarray]]] = {}  # level -> (index, noise)
        self.previous: dict[str, np.ndarray] | None = None  # noise(t) of the last release

    def next(self, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The increment noise(t) − noise(t−1) for the next leaf."""
        self.t += 1
        t, nodes = self.t, {}
        for level in range(t.bit_length()):
            if t >> level & 1:
                index = t >> level
                kept = self.nodes.get(level)
                nodes[level] = kept if kept is not None and kept[0] == index else (index, self.draw(self.std, like))
        self.nodes = nodes
        now = {k: sum(noise[k] for _, noise in nodes.values()) for k in like}
        before = self.previous or {k: np.zeros(np.shape(v)) for k, v in like.items()}
        self.previous = now
        return {k: now[k] - before[k] for k in like}
