"""The spoken-command corpus: a public set and five institutions, synthesised with espeak-ng.

Twenty words (the digits and ten commands). Each institution hears them in its own accent
(espeak-ng voice: feature shift), through its own microphone (clean, telephone, noisy, far-field:
feature shift), with its own vocabulary (label shift) and amount of data (quantity skew). A
"speaker" is a voice variant (``+m3``, ``+f2``, …) at a speed and pitch drawn from the seed; the
test speakers of an institution are never among its training speakers. ``build`` writes, under a
folder:

    public.npz            the public institution's training set (pre-training only)
    inst0.npz … inst4.npz  x_train (N, 40, 100) log-mel, y_train, x_test, y_test
    corpus.json           what was synthesised (sizes, voices, conditions)

Run ``python speech_corpus.py OUT`` to build it alone; ``prepare.py`` builds it when it is missing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pollen.data import speech

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS = DIGITS + COMMANDS  # class i is WORDS[i]
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
SAMPLES = speech.SAMPLE_RATE  # one second per clip (100 feature frames)
N_MELS = 40


@dataclass(frozen=True)
class Institution:
    """One site: who speaks, which words, how it is recorded, and how much of it there is.

    Attributes:
        name: a label for tables.
        voice: the espeak-ng voice (the accent).
        words: the vocabulary it records (class ids are WORDS' indices).
        condition: clean, telephone, noisy (10 dB SNR) or far (far-field microphone).
        train_speakers: speakers in its training set.
        test_speakers: other speakers, its test set.
        copies: recordings of each word by each training speaker (random offset, gain, noise).
    """

    name: str
    voice: str
    words: tuple[str, ...]
    condition: str
    train_speakers: int
    test_speakers: int = 4
    copies: int = 2


PUBLIC = Institution("public (US English)", "en-us", WORDS, "clean", train_speakers=12, test_speakers=0, copies=2)
INSTITUTIONS = (
    Institution("Scotland, clean", "en-gb-scotland", WORDS, "clean", train_speakers=8),
    Institution("Caribbean, telephone", "en-029", DIGITS + ("yes", "no"), "telephone", train_speakers=8),
    Institution("Lancaster, noisy ward", "en-gb-x-gbclan", COMMANDS + DIGITS[:5], "noisy", train_speakers=6),
    Institution("French accent, clean", "fr", WORDS, "clean", train_speakers=3),
    Institution("German accent, far mic", "de", WORDS, "far", train_speakers=2),
)


def quick(inst: Institution) -> Institution:
    """A much smaller version (for the tests): fewer speakers and words."""
    words = tuple(w for w in inst.words if w in WORDS[:3] + COMMANDS[:3]) or inst.words[:6]
    return Institution(inst.name, inst.voice, words, inst.condition, train_speakers=min(inst.train_speakers, 2),
                       test_speakers=min(inst.test_speakers, 1), copies=1)


def _speakers(n: int, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """``n`` speakers: (variant, words per minute, pitch)."""
    variants = rng.permutation(VARIANTS)
    return [(str(variants[i % len(variants)]), int(rng.integers(135, 200)), int(rng.integers(25, 75))) for i in range(n)]


CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "clean": lambda x, rng: x,
    "telephone": lambda x, rng: speech.telephone(x),
    "noisy": lambda x, rng: speech.add_noise(x, 10.0, rng),
    "far": lambda x, rng: speech.far_field(x),
}


def _record(inst: Institution, speakers: list[tuple[str, int, int]], copies: int, rng: np.random.Generator,
            pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
    """Every (speaker, word) of ``inst`` ``copies`` times: log-mel features and class ids."""
    jobs = [(w, s) for s in speakers for w in inst.words]
    voices = pool.map(lambda job: speech.speak(job[0], f"{inst.voice}+{job[1][0]}", job[1][1], job[1][2]), jobs)
    waves, labels = [], []
    for (word, _), clip in zip(jobs, voices):
        for _ in range(copies):
            x = speech.fit_length(clip, SAMPLES, int(rng.integers(0, SAMPLES // 8)))
            x = x * float(rng.uniform(0.5, 1.0))
            x = CONDITIONS[inst.condition](x, rng)
            waves.append(speech.add_noise(x, 30.0, rng))  # a little room noise everywhere
            labels.append(WORDS.index(word))
    return speech.log_mel(np.stack(waves), N_MELS), np.asarray(labels, dtype=np.int64)


def build(out: str | Path, *, small: bool = False, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Synthesise the public set and every institution into ``out`` (skipped when already there).

    Raises:
        DataError: espeak-ng is missing (with how to install it).
    """
    out = Path(out)
    marker = out / "corpus.json"
    if marker.exists() and json.loads(marker.read_text()).get("small") == small:
        return out
    speech.espeak_path()  # fail early, with the install line
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sites = [quick(i) for i in (PUBLIC, *INSTITUTIONS)] if small else [PUBLIC, *INSTITUTIONS]
    summary = []
    with ThreadPoolExecutor(4) as pool:
        for k, inst in enumerate(sites):
            train = _speakers(inst.train_speakers + inst.test_speakers, rng)
            x, y = _record(inst, train[: inst.train_speakers], inst.copies, rng, pool)
            arrays = {"x_train": x, "y_train": y}
            if inst.test_speakers:
                arrays["x_test"], arrays["y_test"] = _record(inst, train[inst.train_speakers :], 1, rng, pool)
            name = "public" if k == 0 else f"inst{k - 1}"
            np.savez(out / f"{name}.npz", **arrays)
            summary.append({"file": f"{name}.npz", **asdict(inst), "train": len(y),
                            "test": int(len(arrays.get("y_test", ())))})
            log(f"  {name}: {inst.name}: {len(y)} training clips, {summary[-1]['test']} test clips")
    marker.write_text(json.dumps({"small": small, "seed": seed, "words": WORDS, "sites": summary}, indent=1))
    return out


if __name__ == "__main__":
    build(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data")
