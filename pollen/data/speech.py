"""Speech on this machine: words spoken by ``espeak-ng`` (no download), recording conditions, and
Whisper's log-mel features.

``speak`` runs the Debian ``espeak-ng`` program (a formant synthesiser: every voice and variant,
such as ``en-gb-scotland+f3``, is a different "speaker") and returns 16 kHz mono float32 samples.
``telephone``, ``far_field`` and ``add_noise`` imitate different microphones and rooms (the feature
shift of the speech seed). ``log_mel`` computes the features of ``transformers``'
``WhisperFeatureExtractor`` (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
Supervision": 25 ms windows, 10 ms hop, log-mel, clamped to 8 below the maximum and scaled), from
numpy, without torchaudio. All randomness comes from the generator passed in.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

from pollen.errors import DataError, require

SAMPLE_RATE = 16_000  # Whisper's
ESPEAK = "espeak-ng"
INSTALL_HINT = ("install it with `apt-get install espeak-ng` (Debian/Ubuntu; `bash scripts/setup.sh --speech` does "
                "it when run as root), `dnf install espeak-ng` (Fedora) or `brew install espeak-ng` (macOS)")


def espeak_path(executable: str = ESPEAK) -> str:
    """The path of the ``espeak-ng`` program.

    Raises:
        DataError: it is not installed (the message says how to install it).
    """
    path = shutil.which(executable)
    if path is None:
        raise DataError(f"speech synthesis needs the {executable!r} program, which is not on PATH; {INSTALL_HINT}")
    return path


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes as ``(float32 samples in [-1, 1], sample rate)`` (first channel).

    espeak-ng's ``--stdout`` writes a streaming header whose frame count is meaningless, so the
    length comes from the bytes that follow the header.

    Raises:
        DataError: not a 16-bit PCM WAV.
    """
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            header = data.find(b"data") + 8
    except (wave.Error, EOFError) as exc:
        raise DataError(f"not a WAV file: {exc}") from None
    if width != 2 or header < 8:
        raise DataError(f"expected 16-bit PCM WAV, got {8 * width}-bit samples")
    body = data[header:]
    samples = np.frombuffer(body[: len(body) // (2 * channels) * 2 * channels], dtype="<i2")
    return samples.reshape(-1, channels)[:, 0].astype(np.float32) / 32768.0, rate


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """``x`` at ``src`` Hz resampled to ``dst`` Hz (band-limited, by the FFT)."""
    if src == dst or len(x) == 0:
        return x.astype(np.float32, copy=False)
    n = max(1, int(round(len(x) * dst / src)))
    spectrum = np.fft.rfft(x)
    keep = n // 2 + 1
    out = np.zeros(keep, dtype=spectrum.dtype)
    out[: min(keep, len(spectrum))] = spectrum[: min(keep, len(spectrum))]
    return (np.fft.irfft(out, n) * (n / len(x))).astype(np.float32)


def speak(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50, *, rate: int = SAMPLE_RATE,
          executable: str = ESPEAK) -> np.ndarray:
    """``text`` spoken by espeak-ng: float32 samples at ``rate`` Hz.

    Args:
        text: what to say.
        voice: an espeak-ng voice, optionally with a variant (``en-gb+f3``; ``espeak-ng --voices``).
        speed: words per minute (80 … 450).
        pitch: 0 … 99.
        rate: the output sample rate (espeak-ng speaks at 22,050 Hz).

    Raises:
        DataError: espeak-ng is missing (with how to install it) or failed.
    """
    cmd = [espeak_path(executable), "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "--stdout", text]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        raise DataError(f"espeak-ng could not speak {text!r} with voice {voice!r}: "
                        f"{done.stderr.decode(errors='replace').strip() or 'no audio'}")
    samples, src = read_wav(done.stdout)
    return resample(samples, src, rate)


def fit_length(x: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """``x`` trimmed of leading and trailing silence, then placed ``offset`` samples into ``n``
    samples of silence (cut when it does not fit)."""
    loud = np.flatnonzero(np.abs(x) > 0.01)
    x = x[loud[0] : loud[-1] + 1] if len(loud) else x[:0]
    out = np.zeros(n, dtype=np.float32)
    offset = max(0, min(offset, n - 1))
    part = x[: n - offset]
    out[offset : offset + len(part)] = part
    return out


def _band(x: np.ndarray, low: float, high: float, rate: int) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, len(x)).astype(np.float32)


def telephone(x: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A telephone line: 300–3,400 Hz and 8-bit μ-law-like coarse quantisation."""
    y = _band(x, 300.0, 3400.0, rate)
    mu = 255.0
    z = np.sign(y) * np.log1p(mu * np.minimum(np.abs(y), 1.0)) / np.log1p(mu)
    z = np.round(z * 127) / 127
    return (np.sign(z) * np.expm1(np.abs(z) * np.log1p(mu)) / mu).astype(np.float32)


def far_field(x: np.ndarray, rate: int = SAMPLE_RATE, cutoff: float = 2500.0, echo: float = 0.4,
              delay_s: float = 0.03) -> np.ndarray:
    """A distant microphone in a small room: high frequencies lost, one echo."""
    y = _band(x, 0.0, cutoff, rate)
    d = int(delay_s * rate)
    if 0 < d < len(y):
        y = y.copy()
        y[d:] += echo * y[:-d]
    return (y / max(1.0, float(np.abs(y).max()))).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` plus white noise at ``snr_db`` dB below the signal's power."""
    power = float(np.mean(x**2)) or 1e-8
    noise = rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def log_mel(waves: np.ndarray, n_mels: int = 40, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Whisper's log-mel features of equal-length waveforms ``(N, samples)`` → ``(N, n_mels, frames)``
    float32, one frame per 10 ms (``transformers.WhisperFeatureExtractor``).

    Raises:
        MissingExtraError: transformers is not installed (the 'speech' extra).
    """
    transformers = require("transformers", "speech", "Whisper log-mel features")
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=rate, hop_length=rate // 100,
                                                     n_fft=int(0.025 * rate), chunk_length=1)
    feats = extractor(list(waves), sampling_rate=rate, return_tensors="np", padding="max_length",
                      max_length=waves.shape[1])["input_features"]
    return np.asarray(feats, dtype=np.float32)  # (N, n_mels, samples / hop)
