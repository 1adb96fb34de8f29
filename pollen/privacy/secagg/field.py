"""Stochastic quantisation of real-valued updates into the ring Z_{2^bits}, with a range check
that guarantees the (weighted) sum of every party's values cannot wrap around.

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS) and Bell et al. 2020 (SecAgg+) sum vectors in Z_R; masks are uniform in Z_R, so the masked
vectors are uniform whatever the inputs. We use R = 2^32 (or 2^64): masks are AES-CTR keystream
words taken as they come (uniform, no rejection sampling), sums wrap with numpy's unsigned
arithmetic, and a masked update costs 4 bytes per parameter, as a float32 update does.

A value ``x`` is clipped to ``[−clip, clip]``, scaled by ``scale`` and rounded stochastically
(unbiased: ``E[q] = x · scale``), so ``|q| ≤ B = clip · scale``. A party multiplies ``q`` by its
integer weight ``w`` (its example count, or 1). The sum is exact in Z_R as long as
``Σ w · B ≤ 2^(bits−1) − 1``; decoding reads it as a two's-complement signed integer. The error of
the weighted mean is at most ``1 / scale`` per coordinate, on top of clipping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pollen.errors import PrivacyError

DTYPES = {32: np.uint32, 64: np.uint64}
SIGNED = {32: np.int32, 64: np.int64}
BLOCK = 1 << 15  # values per block in quantize: its float64 temporaries stay in L2 cache
_TWO32 = float(1 << 32)


@dataclass(frozen=True)
class FieldSpec:
    """How one round quantises: ring Z_{2^bits}, clip range and scale.

    Attributes:
        bits: 32 or 64 (the ring and the width of every masked element).
        clip: each coordinate is clipped to ``[−clip, clip]`` first.
        scale: integer units per unit of the update (``clip · scale`` is a whole number).
    """

    bits: int
    clip: float
    scale: float

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The unsigned container type of a masked element."""
        return DTYPES[self.bits]

    @property
    def bound(self) -> int:
        """Largest magnitude ``B`` of one quantised coordinate before weighting."""
        return int(round(self.clip * self.scale))

    @property
    def error_bound(self) -> float:
        """Largest rounding error of one coordinate of the weighted mean (``1 / scale``)."""
        return 1.0 / self.scale

    def to_dict(self) -> dict[str, float]:
        """JSON-able form (travels in a stage payload)."""
        return {"bits": self.bits, "clip": self.clip, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> "FieldSpec":
        """Inverse of ``to_dict`` (validated)."""
        spec = cls(int(d["bits"]), float(d["clip"]), float(d["scale"]))
        if spec.bits not in DTYPES or not spec.clip > 0 or not spec.scale > 0:
            raise PrivacyError(f"invalid field parameters {d}; expected bits 32 or 64, clip > 0, scale > 0")
        return spec


def limit(bits: int) -> int:
    """Largest magnitude a signed sum may reach in Z_{2^bits}: ``2^(bits−1) − 1``."""
    return 2 ** (bits - 1) - 1


def choose(bits: int, clip: float, total_weight: int) -> FieldSpec:
    """The finest scale at which ``total_weight`` weighted values in ``[−clip, clip]`` still sum
    without overflow.

    Raises:
        PrivacyError: not even one integer unit per party fits (weights too large for the ring).
    """
    if bits not in DTYPES:
        raise PrivacyError(f"secure aggregation works in Z_2^32 or Z_2^64; got bits={bits}")
    if total_weight < 1:
        raise PrivacyError(f"total weight must be at least 1; got {total_weight}")
    per_party = limit(bits) // int(total_weight)
    if per_party < 1:
        raise PrivacyError(
            f"a weighted sum over {total_weight} examples cannot fit in Z_2^{bits}; "
            "use --secagg-bits 64 or uniform weights"
        )
    spec = FieldSpec(bits, float(clip), per_party / float(clip))
    check_range(spec, total_weight)
    return spec


def choose_with_noise(bits: int, clip: float, total_weight: int, noise_std: float) -> FieldSpec:
    """As ``choose``, leaving room for integer noise of std ``noise_std`` (real units) on the sum:
    ``total_weight`` values in [−clip, clip] plus ``skellam.TAIL_STDS`` standard deviations of the
    noise stay inside the ring (a wrap-around would then take a 12σ excursion of the noise).

    Raises:
        PrivacyError: not even one integer unit per party fits.
    """
    from pollen.privacy.skellam import field_scale

    per_party = int(field_scale(bits, clip, total_weight, noise_std) * clip)
    if per_party < 1:
        raise PrivacyError(f"a noisy sum over {total_weight} parties cannot fit in Z_2^{bits}; use --secagg-bits 64")
    spec = FieldSpec(bits, float(clip), per_party / float(clip))
    check_range(spec, total_weight)
    return spec


def check_range(spec: FieldSpec, total_weight: int) -> None:
    """Refuse a field in which the sum of values with total weight ``total_weight`` could wrap.

    Raises:
        PrivacyError: ``total_weight · clip · scale`` exceeds ``2^(bits−1) − 1``.
    """
    worst = int(total_weight) * spec.bound
    if worst > limit(spec.bits):
        raise PrivacyError(
            f"secure sum could overflow: total weight {total_weight} × bound {spec.bound} = {worst} "
            f"> 2^{spec.bits - 1} − 1; lower the scale or the clip range, or use 64 bits"
        )


Segments = Sequence[tuple[int, int]]


def integer_segments(shapes: Sequence[Sequence[int]], dtypes: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, stop)`` of the integer tensors (BatchNorm's step counter, …) in a flattened state.

    Their deltas are whole numbers that may exceed ``clip``: they are summed exactly (scale 1,
    bounded only by the ring's per-party share ``B``) instead of being clipped and scaled.
    """
    out, pos = [], 0
    for shape, dtype in zip(shapes, dtypes):
        n = int(np.prod(shape))
        if not np.issubdtype(np.dtype(dtype), np.floating):
            out.append((pos, pos + n))
        pos += n
    return out


def quantize(values: np.ndarray, spec: FieldSpec, weight: int, rng: np.random.Generator,
             exact: Segments = ()) -> tuple[np.ndarray, float]:
    """``weight · q`` in Z_{2^bits}, where ``q`` stochastically rounds ``clip(values) · scale``.

    Rounding is unbiased up to 2^-32 of a unit: ``q = ⌊v⌋ + [u < 2^32 · (v − ⌊v⌋)]`` with ``u``
    a uniform 32-bit integer (half of one of ``rng``'s raw 64-bit words), so ``P(q = ⌊v⌋ + 1)``
    is the fractional part rounded up to the next multiple of 2^-32. The vector is processed in
    cache-sized blocks (each value crosses memory once rather than once per step), in float64 so
    that ``v`` is exact to far below a unit.

    Args:
        values: float vector ``(D,)``.
        spec: the round's field.
        weight: the party's integer weight (example count, or 1).
        rng: seeded source of the rounding randomness (not security relevant).
        exact: segments holding integers, kept as they are (clipped to ``±B`` only).

    Returns:
        (the vector as ``spec.dtype``, fraction of float coordinates that were clipped).
    """
    x = np.asarray(values).ravel()
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    c, size = spec.clip, x.size
    out = np.empty(size, dtype=spec.dtype)
    signed = out.view(SIGNED[spec.bits])  # two's complement: the ring element of a signed integer
    m = min(BLOCK, size)
    v, low, up = np.empty(m), np.empty(m), np.empty(m, dtype=np.uint32)
    below, wide = np.empty(m, dtype=bool), np.empty(m, dtype=np.int64)
    n_over, bits = 0, rng.bit_generator
    for start in range(0, size, BLOCK):
        k = min(BLOCK, size - start)
        vk, lk, uk, bk, wk = v[:k], low[:k], up[:k], below[:k], wide[:k]
        np.copyto(vk, x[start : start + k])
        n_over += np.count_nonzero(np.greater(vk, c, out=bk)) + np.count_nonzero(np.less(vk, -c, out=bk))
        np.clip(vk, -c, c, out=vk)
        vk *= spec.scale  # in [−B, B]
        np.floor(vk, out=lk)
        vk -= lk  # the fractional part, in [0, 1)
        vk *= _TWO32
        uk[:] = bits.random_raw((k + 1) // 2).view(np.uint32)[:k]  # the generator's raw 64-bit words, halved
        np.less(uk, vk, out=bk)  # P = the fractional part: E[q] = x · scale
        lk += bk
        np.copyto(wk, lk, casting="unsafe")  # a whole number, |q| ≤ B
        wk *= weight  # exact in int64 (wraps modulo 2^64 in the 64-bit ring, as the ring does)
        np.copyto(signed[start : start + k], wk, casting="unsafe")  # modulo 2^bits
    for a, b in exact:
        n_over -= np.count_nonzero(x[a:b] > c) + np.count_nonzero(x[a:b] < -c)
        ints = np.clip(np.rint(x[a:b]), -spec.bound, spec.bound).astype(np.int64) * weight
        np.copyto(signed[a:b], ints, casting="unsafe")
    return out, (n_over / size if size else 0.0)


def dequantize(total: np.ndarray, spec: FieldSpec, exact: Segments = ()) -> np.ndarray:
    """The signed integer sum in ``total`` (Z_{2^bits}) back to real units (float64)."""
    signed = total.view(SIGNED[spec.bits]).astype(np.float64)
    out = signed / spec.scale
    for a, b in exact:
        out[a:b] = signed[a:b]
    return out
