"""Partitioners: split a training set's indices among parties, seeded and non-overlapping.

Every partitioner returns ``list[np.ndarray]``: one int64 index array into the training set per
party. The schemes follow the usual federated benchmarks:

- ``iid``: a seeded permutation cut into equal shards (BENCHMARKS.md).
- ``dirichlet``: label skew by the NIID-Bench recipe (Li et al., "Federated Learning on Non-IID
  Data Silos: An Experimental Study", ICDE 2022), with α the concentration.
- ``shards``: McMahan et al.'s pathological split ("Communication-Efficient Learning of Deep
  Networks from Decentralized Data", AISTATS 2017): sort by label, deal out k shards per party.
- ``quantity``: quantity skew (NIID-Bench): party sizes from Dir(α), content IID.
- ``natural``: whole natural groups (e.g. FEMNIST writers) per party.
- ``sizes``: chosen party sizes, exact (``"500,300,200"``) or proportional (``"5:3:2"``, every
  example used, largest-remainder rounding); content IID.
- ``draw``: each party draws ``party_size`` examples uniformly with replacement
  (``default_rng(seed).integers(0, N, (parties, party_size))``): federations with more parties than
  examples (BENCHMARKS.md W7 beyond 10,000 parties). Parties may share examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pollen.data.dataset import Dataset
from pollen.errors import DataError

PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "quantity", "natural", "sizes")  # disjoint splits
DRAW = "draw"  # with replacement: parties may share examples
MAX_DIRICHLET_TRIES = 1000


def _check_count(value: int, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise DataError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"labels must be a 1-d integer array, got {labels.ndim}-d {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"labels must be non-negative, found {labels.min()}")
    return labels


def _check_alpha(alpha: float) -> float:
    if not np.isfinite(alpha) or alpha <= 0:
        raise DataError(f"alpha must be a positive finite number, got {alpha!r}")
    return float(alpha)


def _as_parts(pieces: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(p, dtype=np.int64) for p in pieces]


def iid(n: int, parties: int, seed: int) -> list[np.ndarray]:
    """IID split: ``default_rng(seed).permutation(n)`` cut into equal shards.

    Args:
        n: Number of training examples.
        parties: Number of parties, ``1 <= parties <= n``.
        seed: Generator seed.

    Returns:
        One index array per party; sizes differ by at most one.
    """
    n = _check_count(n, "n", 1)
    parties = _check_count(parties, "parties", 1, n)
    return _as_parts(np.array_split(np.random.default_rng(seed).permutation(n), parties))


def draw(n: int, parties: int, party_size: int, seed: int) -> list[np.ndarray]:
    """Each party draws ``party_size`` of ``n`` examples uniformly with replacement.

    Args:
        n: Number of training examples.
        parties: Number of parties (any number: examples are shared, never copied).
        party_size: Examples per party.
        seed: Generator seed.

    Returns:
        One index array per party: rows of one ``(parties, party_size)`` array (views, no copies).
    """
    n = _check_count(n, "n", 1)
    parties = _check_count(parties, "parties", 1)
    party_size = _check_count(party_size, "party_size", 1)
    rows = np.random.default_rng(seed).integers(0, n, (parties, party_size))  # (parties, party_size)
    return list(rows)


def dirichlet(labels: np.ndarray, parties: int, alpha: float, seed: int,
              min_size: int = 10) -> list[np.ndarray]:
    """Label skew by the NIID-Bench recipe.

    For each class in turn, its (shuffled) examples are divided by shares drawn from
    Dir(α·1); a party already holding at least N/parties examples gets no share of later
    classes; the shares are renormalised. The whole draw is repeated until every party holds at
    least ``min_size`` examples.

    Args:
        labels: Training labels, ``(N,)``.
        parties: Number of parties.
        alpha: Concentration; small values give few classes per party.
        seed: Generator seed.
        min_size: Smallest acceptable party.

    Returns:
        One index array per party.

    Raises:
        DataError: No valid draw was found in ``MAX_DIRICHLET_TRIES`` attempts.
    """
    labels = _check_labels(labels)
    n = len(labels)
    parties = _check_count(parties, "parties", 1, n)
    alpha = _check_alpha(alpha)
    min_size = _check_count(min_size, "min_size", 0)
    if min_size * parties > n:
        raise DataError(f"dirichlet: {parties} parties of at least {min_size} examples need "
                        f"{min_size * parties}, but the training set has {n}")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.unique(labels), side="left").tolist() + [n]
    by_class = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]  # ascending, like np.where
    for _ in range(MAX_DIRICHLET_TRIES):
        batches: list[list[np.ndarray]] = [[] for _ in range(parties)]
        sizes = np.zeros(parties, dtype=np.int64)
        for members in by_class:
            idx_k = members.copy()
            rng.shuffle(idx_k)
            shares = rng.dirichlet(np.full(parties, alpha))
            shares = shares * (sizes < n / parties)
            total = shares.sum()
            if not total > 0:  # every open party drew a zero share: redraw everything
                sizes[:] = -1
                break
            cuts = (np.cumsum(shares / total) * len(idx_k)).astype(int)[:-1]
            for j, piece in enumerate(np.split(idx_k, cuts)):
                batches[j].append(piece)
                sizes[j] += len(piece)
        if sizes.min() >= min_size:
            parts = [np.concatenate(b) if b else np.empty(0, np.int64) for b in batches]
            for part in parts:
                rng.shuffle(part)
            return _as_parts(parts)
    raise DataError(
        f"dirichlet: no draw with alpha={alpha} gave all {parties} parties at least {min_size} "
        f"examples in {MAX_DIRICHLET_TRIES} tries; use a larger alpha, fewer parties or a "
        "smaller min_size"
    )


def shards(labels: np.ndarray, parties: int, classes_per_party: int, seed: int) -> list[np.ndarray]:
    """McMahan et al.'s pathological non-IID split.

    The examples are sorted by label (ties in seeded random order), cut into
    ``parties * classes_per_party`` equal shards, and each party is dealt ``classes_per_party``
    random shards. A party sees at most ``classes_per_party`` classes when every class size is a
    multiple of the shard size; otherwise a shard may straddle two classes.

    Args:
        labels: Training labels, ``(N,)``.
        parties: Number of parties.
        classes_per_party: Shards (and so, typically, classes) per party.
        seed: Generator seed.

    Returns:
        One index array per party.
    """
    labels = _check_labels(labels)
    n = len(labels)
    parties = _check_count(parties, "parties", 1, n)
    k = _check_count(classes_per_party, "classes_per_party", 1, n // parties)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(order, parties * k)
    dealt = rng.permutation(parties * k).reshape(parties, k)  # (parties, k) shard ids
    return _as_parts([np.concatenate([pieces[s] for s in row]) for row in dealt])


def quantity_skew(n: int, parties: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Quantity skew: party sizes proportional to a Dir(α) draw, at least one each; IID content.

    Args:
        n: Number of training examples.
        parties: Number of parties, ``1 <= parties <= n``.
        alpha: Concentration; small values give very unequal sizes.
        seed: Generator seed.

    Returns:
        One index array per party.
    """
    n = _check_count(n, "n", 1)
    parties = _check_count(parties, "parties", 1, n)
    alpha = _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    shares = rng.dirichlet(np.full(parties, alpha)) * (n - parties)
    sizes = 1 + np.floor(shares).astype(np.int64)  # one each, then the Dirichlet shares
    leftover = n - int(sizes.sum())
    sizes[np.argsort(shares - np.floor(shares))[::-1][:leftover]] += 1  # largest remainders
    return _as_parts(np.split(perm, np.cumsum(sizes)[:-1]))


def natural(groups: np.ndarray, parties: int, seed: int) -> list[np.ndarray]:
    """Natural split: whole groups (e.g. writers) per party.

    With as many parties as groups each party holds one group; with fewer, the groups are
    shuffled with the seed and dealt round-robin.

    Args:
        groups: Natural id of every training example, ``(N,)``.
        parties: Number of parties, at most the number of distinct groups.
        seed: Generator seed.

    Returns:
        One index array per party, ascending.

    Raises:
        DataError: More parties than groups.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise DataError(f"groups must be a non-empty 1-d array, got shape {groups.shape}")
    unique, inverse = np.unique(groups, return_inverse=True)
    parties = _check_count(parties, "parties", 1)
    if parties > len(unique):
        raise DataError(f"natural: {parties} parties requested but the data has only "
                        f"{len(unique)} natural groups; use at most {len(unique)} parties")
    party_of_group = np.empty(len(unique), dtype=np.int64)
    party_of_group[np.random.default_rng(seed).permutation(len(unique))] = (
        np.arange(len(unique)) % parties)
    owner = party_of_group[inverse.ravel()]  # (N,) party of every example
    order = np.argsort(owner, kind="stable")
    return _as_parts(np.split(order, np.cumsum(np.bincount(owner, minlength=parties))[:-1]))


SIZES_EXAMPLE = "exact examples per party as '500,300,200' or proportions of all data as '5:3:2'"


def parse_sizes(text: str) -> tuple[list[float], bool]:
    """Reads party sizes written as exact counts (``"500,300,200"``) or proportions (``"5:3:2"``).

    Returns:
        ``(sizes, proportional)``: positive integer counts and False for the comma form; positive
        numbers and True for the colon form.

    Raises:
        DataError: Text in neither form.
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"cannot read sizes {text!r}: write {SIZES_EXAMPLE}")
    proportional = ":" in text
    if proportional and "," in text:
        raise DataError(f"cannot read sizes {text!r}: it mixes ',' and ':'; write {SIZES_EXAMPLE}")
    values: list[float] = []
    for piece in (p.strip() for p in text.split(":" if proportional else ",")):
        try:
            value = float(piece)
        except ValueError:
            raise DataError(f"cannot read sizes {text!r}: {piece!r} is not a number; write "
                            f"{SIZES_EXAMPLE}") from None
        if not (np.isfinite(value) and value > 0):
            raise DataError(f"cannot read sizes {text!r}: every size must be positive, got "
                            f"{piece!r}; write {SIZES_EXAMPLE}")
        if not proportional and not value.is_integer():
            raise DataError(f"cannot read sizes {text!r}: exact sizes count examples, got "
                            f"{piece!r}; write {SIZES_EXAMPLE}")
        values.append(value if proportional else int(value))
    return values, proportional


def _largest_remainder(n: int, weights: Sequence[float]) -> np.ndarray:
    """Splits ``n`` in proportion to ``weights``: floors of ``n·w/Σw``, the rest one each to the
    largest remainders (ties to the earlier party); a party left with none takes one from the
    largest."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.isfinite(w).all() or (w <= 0).any():
        raise DataError(f"sizes: proportions must be positive numbers, got {list(weights)!r}")
    if len(w) > n:
        raise DataError(f"sizes: {len(w)} parties need at least {len(w)} examples, but the "
                        f"training set has {n}")
    quotas = n * w / w.sum()
    amounts = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - amounts), kind="stable")  # largest remainder first
    amounts[order[:n - int(amounts.sum())]] += 1
    for j in np.flatnonzero(amounts == 0):  # a share that rounds to nothing still gets one
        amounts[np.argmax(amounts)] -= 1
        amounts[j] = 1
    return amounts


def sizes(n: int, counts: Sequence[float], seed: int,
          proportional: bool = False) -> list[np.ndarray]:
    """Chosen party sizes: ``default_rng(seed).permutation(n)`` cut into consecutive pieces.

    Args:
        n: Number of training examples.
        counts: One size per party: exact example counts, or proportions when ``proportional``.
        seed: Generator seed.
        proportional: Use every example, splitting ``n`` as ``n·p/Σp`` rounded by largest
            remainder (each party at least one example).

    Returns:
        One index array per party, of exactly the given (or rounded) sizes; exact counts that sum
        to less than ``n`` leave the other examples unused.

    Raises:
        DataError: A count that is not a positive integer, or exact counts that sum past ``n``.
    """
    n = _check_count(n, "n", 1)
    counts = list(counts)
    if not counts:
        raise DataError(f"sizes: give one size per party, {SIZES_EXAMPLE}")
    if proportional:
        amounts = _largest_remainder(n, counts)
    else:
        amounts = np.array([_check_count(int(c) if isinstance(c, float) and c.is_integer() else c,
                                         "each exact size", 1) for c in counts], dtype=np.int64)
        if amounts.sum() > n:
            ratio = ":".join(str(int(a)) for a in amounts)
            raise DataError(f"sizes: the exact counts sum to {int(amounts.sum())} but the training "
                            f"set has only {n} examples; use smaller counts, or proportions such "
                            f"as '{ratio}', which split all {n} examples in that ratio")
    perm = np.random.default_rng(seed).permutation(n)
    ends = np.cumsum(amounts)
    return _as_parts([perm[end - size:end] for size, end in zip(amounts, ends)])


def _sizes_scheme(n: int, parties: int, seed: int,
                  spec: str | Sequence[int] | None) -> list[np.ndarray]:
    if spec is None:
        raise DataError(f"the sizes scheme needs sizes=: {SIZES_EXAMPLE}")
    counts, proportional = parse_sizes(spec) if isinstance(spec, str) else (list(spec), False)
    if len(counts) != parties:
        raise DataError(f"sizes {spec!r} gives {len(counts)} parties but parties is {parties}; "
                        f"give one size per party or set parties to {len(counts)}")
    return sizes(n, counts, seed, proportional)


# each takes (dataset, parties, seed, alpha, classes_per_party, sizes); "draw" is handled in partition()
_SCHEMES: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": lambda d, p, s, a, k, z: iid(len(d.y_train), p, s),
    "dirichlet": lambda d, p, s, a, k, z: dirichlet(d.y_train, p, a, s),
    "shards": lambda d, p, s, a, k, z: shards(d.y_train, p, k, s),
    "quantity": lambda d, p, s, a, k, z: quantity_skew(len(d.y_train), p, a, s),
    "natural": lambda d, p, s, a, k, z: natural(_groups(d), p, s),
    "sizes": lambda d, p, s, a, k, z: _sizes_scheme(len(d.y_train), p, s, z),
}


def _groups(dataset: Dataset) -> np.ndarray:
    if dataset.groups_train is None:
        raise DataError(f"the natural scheme needs natural ids, but dataset {dataset.name!r} has "
                        "none; use 'femnist' or another scheme")
    return dataset.groups_train


def partition(dataset: Dataset, scheme: str, parties: int, seed: int, alpha: float = 0.5,
              classes_per_party: int = 2,
              sizes: str | Sequence[int] | None = None, party_size: int = 6) -> list[np.ndarray]:
    """Splits ``dataset``'s training set among ``parties`` by ``scheme``.

    Args:
        dataset: The dataset whose training indices are split.
        scheme: One of ``PARTITION_SCHEMES``, or ``"draw"``.
        parties: Number of parties, ``1 <= parties <= len(dataset.y_train)``.
        seed: Generator seed; the same seed gives the same split.
        alpha: Dirichlet concentration for ``dirichlet`` and ``quantity``.
        classes_per_party: Shards per party for ``shards``.
        sizes: Party sizes for ``sizes``: text for :func:`parse_sizes` (``"500,300,200"`` or
            ``"5:3:2"``) or a list of exact counts; one size per party.
        party_size: Examples each party draws for ``draw``.

    Returns:
        One int64 index array into the training set per party.

    Raises:
        DataError: Unknown scheme or invalid arguments.
    """
    if scheme == DRAW:
        return draw(len(dataset.y_train), parties, party_size, seed)
    if scheme not in _SCHEMES:
        raise DataError(f"unknown partition scheme {scheme!r}; valid schemes: "
                        f"{', '.join((*PARTITION_SCHEMES, DRAW))}")
    _check_count(parties, "parties", 1, len(dataset.y_train))
    return _SCHEMES[scheme](dataset, parties, seed, alpha, classes_per_party, sizes)


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Counts each party's examples per class.

    Returns:
        ``(parties, num_classes)`` int64 counts.
    """
    labels = _check_labels(labels)
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"labels reach {labels.max()} but num_classes is {num_classes}")
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)


def format_histogram(hist: np.ndarray) -> str:
    """Renders a label histogram as a markdown table: party, n, then one column per class."""
    hist = np.asarray(hist)
    header = ["party", "n", *(str(c) for c in range(hist.shape[1]))]
    rows = [[str(i), str(int(row.sum())), *(str(int(v)) for v in row)]
            for i, row in enumerate(hist)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def split_holdout(indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits one party's indices into a training part and a held-out validation part.

    Args:
        indices: The party's training indices.
        fraction: Share held out, ``0 <= fraction < 1`` (rounded to whole examples).
        seed: Generator seed.

    Returns:
        ``(train_idx, val_idx)``, disjoint and together equal to ``indices``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0 <= fraction < 1:
        raise DataError(f"holdout fraction must be in [0, 1), got {fraction!r}")
    n_val = int(round(fraction * len(indices)))
    if n_val >= len(indices) and len(indices):
        raise DataError(f"holding out {fraction} of {len(indices)} examples leaves none to "
                        "train on")
    perm = np.random.default_rng(seed).permutation(len(indices))
    return indices[perm[n_val:]], indices[perm[:n_val]]
