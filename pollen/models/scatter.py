"""Hand-crafted features for training under differential privacy: the 2-D scattering transform.

Tramèr & Boneh, "Differentially Private Learning Needs Better Features (or Much More Data)", ICLR
2021: under DP-SGD a linear model (or a small CNN) on fixed ScatterNet features (Mallat 2012; Oyallon
& Mallat 2015) beats end-to-end CNNs on MNIST, Fashion-MNIST and CIFAR-10 at the same ε, because the
features need no private learning and the trainable part is small and quick to fit.

``Scattering2D(J=2, L=8)`` gives 1 + J·L + L²·J(J−1)/2 = 81 channels per input channel at 1/2^J of
the resolution (7×7 for 28×28): zeroth order x ⋆ φ, first order |x ⋆ ψ_{j,θ}| ⋆ φ, second order
||x ⋆ ψ_{j1,θ1}| ⋆ ψ_{j2,θ2}| ⋆ φ for j2 > j1, with Morlet wavelets ψ and a Gaussian φ built as in
Kymatio (Andreux et al. 2020; same σ = 0.8·2^j, ξ = 3π/4·2^−j, slant 4/L and periodisation). It is
written here, a few dozen lines of FFTs, instead of depending on ``kymatio``: the DP recipe's default
model must not need an optional extra, and Kymatio's torch backend subsamples between orders
(we compute at full resolution and subsample once, which costs little at 28×28 and 32×32).

The filters are non-persistent buffers: they are not in the state dict, so nothing of them travels
between parties and coordinator, and DP-SGD (Opacus) sees only the trainable head.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from pollen.errors import ModelError


def _gabor(size_m: int, size_n: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
    """A periodised 2-D Gabor filter centred on pixel (0, 0), shape (M, N), complex."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    out = np.zeros((size_m, size_n), np.complex128)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.mgrid[ex * size_m:(ex + 1) * size_m, ey * size_n:(ey + 1) * size_n]
            arg = -(curv[0, 0] * xx * xx + (curv[0, 1] + curv[1, 0]) * xx * yy + curv[1, 1] * yy * yy)
            out += np.exp(arg + 1j * (xx * math.cos(theta) + yy * math.sin(theta)) * xi)
    return out / (2 * math.pi * sigma * sigma / slant)


def _morlet(size_m: int, size_n: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter minus its envelope times the constant that makes it sum to zero."""
    wave = _gabor(size_m, size_n, sigma, theta, xi, slant)
    envelope = _gabor(size_m, size_n, sigma, theta, 0.0, slant)
    return wave - (wave.sum() / envelope.sum()) * envelope


def _periodize(spectrum: np.ndarray, res: int) -> np.ndarray:
    """A filter's spectrum for a signal subsampled by 2^res: the band above the new Nyquist set to
    zero, then folded onto (M/2^res, N/2^res) (Kymatio's ``periodize_filter_fft``)."""
    if res == 0:
        return spectrum
    m, n = spectrum.shape
    k = 2**res
    mask = np.ones_like(spectrum)
    start_m, len_m = int(m * 2 ** (-res - 1)), int(m * (1 - 2**-res))
    start_n, len_n = int(n * 2 ** (-res - 1)), int(n * (1 - 2**-res))
    mask[start_m:start_m + len_m, :] = 0
    mask[:, start_n:start_n + len_n] = 0
    return (spectrum * mask).reshape(k, m // k, k, n // k).sum(axis=(0, 2))


def filter_bank(size_m: int, size_n: int, J: int, L: int) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """The filters' Fourier transforms (real): ψ[j][res] of shape (L, M/2^res, N/2^res) for res ≤ j,
    and φ[res] of shape (M/2^res, N/2^res) for res < J."""
    psi = []
    for j in range(J):
        full = [np.real(np.fft.fft2(_morlet(size_m, size_n, 0.8 * 2**j, (int(L - L / 2 - 1) - t) * math.pi / L,
                                            3.0 / 4.0 * math.pi / 2**j, 4.0 / L)))
                for t in range(L)]
        psi.append([np.stack([_periodize(f, res) for f in full]) for res in range(j + 1)])
    phi_full = np.real(np.fft.fft2(_gabor(size_m, size_n, 0.8 * 2 ** (J - 1), 0.0, 0.0)))
    return psi, [_periodize(phi_full, res) for res in range(J)]


def scattering_channels(J: int, L: int) -> int:
    """Output channels per input channel: 1 + J·L + L²·J(J−1)/2."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def _subsample(spectrum: torch.Tensor, k: int) -> torch.Tensor:
    """The spectrum of the signal subsampled by k along both axes: the mean of its k×k folds (a sum
    of slices: ``reshape(..., k, m/k, k, n/k).mean`` over complex values is 5× slower on CPU)."""
    if k == 1:
        return spectrum
    m, n = spectrum.shape[-2] // k, spectrum.shape[-1] // k
    out = spectrum[..., :m, :n].clone()
    for a in range(k):
        for b in range(k):
            if a or b:
                out += spectrum[..., a * m:(a + 1) * m, b * n:(b + 1) * n]
    return out.div_(k * k)


class Scattering2D(nn.Module):
    """(B, C, H, W) → (B, C·K, H/2^J, W/2^J), K = ``scattering_channels(J, L)``; H, W divisible by 2^J.

    Kymatio's cascade: each convolution in the Fourier domain, each subsampling (by 2^j1 after the
    first wavelet, 2^(j2−j1) after the second, to 2^J after φ) a fold of the spectrum, so the second
    order runs at a quarter of the pixels.
    """

    def __init__(self, height: int, width: int, J: int = 2, L: int = 8) -> None:
        super().__init__()
        step = 2**J
        if height % step or width % step or min(height, width) < 2 * step:
            raise ModelError(f"the scattering transform with J = {J} needs a side divisible by {step} "
                             f"and at least {2 * step} pixels; got {height}×{width}")
        self.J, self.L, self.pad = J, L, step  # reflect-pad by 2^J on each side, as Kymatio does
        psi, phi = filter_bank(height + 2 * step, width + 2 * step, J, L)
        for j, per_res in enumerate(psi):
            for res, f in enumerate(per_res):
                self.register_buffer(f"psi_{j}_{res}", torch.from_numpy(f).float(), persistent=False)
        for res, f in enumerate(phi):
            self.register_buffer(f"phi_{res}", torch.from_numpy(f).float(), persistent=False)

    def _lowpass(self, spectrum: torch.Tensor, res: int) -> torch.Tensor:
        """⋆ φ, subsampled from 2^res to 2^J, unpadded: real (..., H/2^J, W/2^J)."""
        out = torch.fft.ifft2(_subsample(spectrum * getattr(self, f"phi_{res}"), 2 ** (self.J - res))).real
        return out[..., 1:-1, 1:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.pad
        xf = torch.fft.fft2(nn.functional.pad(x, (p, p, p, p), mode="reflect"))  # (B, C, M, N)
        first, second = [], []
        for j1 in range(self.J):
            u1 = torch.fft.ifft2(_subsample(xf.unsqueeze(2) * getattr(self, f"psi_{j1}_0"), 2**j1)).abs()
            u1f = torch.fft.fft2(u1)  # (B, C, L, M/2^j1, N/2^j1)
            first.append(self._lowpass(u1f, j1))
            for j2 in range(j1 + 1, self.J):
                y = u1f.unsqueeze(3) * getattr(self, f"psi_{j2}_{j1}")  # (B, C, L, L, ·, ·)
                u2f = torch.fft.fft2(torch.fft.ifft2(_subsample(y, 2 ** (j2 - j1))).abs())
                second.append(self._lowpass(u2f, j2).flatten(2, 3))
        outputs = [self._lowpass(xf, 0).unsqueeze(2), *first, *second]  # Kymatio's order: by order, then j
        return torch.cat(outputs, dim=2).reshape(batch, -1, height // 2**self.J, width // 2**self.J)


class ScatterLinear(nn.Module):
    """ScatterNet features (J = 2, L = 8) → GroupNorm (no affine) → a linear classifier: Tramèr &
    Boneh's best model for Fashion-MNIST under DP-SGD, and Pollen's DP recipes' model for images.

    ``forward`` takes images (B, C, H, W) or their features (B, 81·C, H/4, W/4), told apart by shape:
    the built-in app computes the features of a dataset once (``pollen.models.features``) instead of
    at every step, and anything else (an attack, a user's tensors) may pass images.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, groups: int = 27) -> None:
        super().__init__()
        self.fixed_features = Scattering2D(height, width)
        channels = in_channels * scattering_channels(2, 8)
        self.feature_shape = (channels, height // 4, width // 4)
        self.norm = nn.GroupNorm(groups if channels % groups == 0 else 1, channels, affine=False)
        self.head = nn.Linear(channels * (height // 4) * (width // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.feature_shape:
            # fixed: nothing to learn or clip (no graph unless x itself wants a gradient: an inversion attack)
            x = self.fixed_features(x)
        return self.head(self.norm(x).flatten(1))  # (B, classes)


def scatter_linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ModelError(f"scatter_linear takes images (channels, height, width); got input shape {input_shape}")
    return ScatterLinear(*input_shape, num_classes)
