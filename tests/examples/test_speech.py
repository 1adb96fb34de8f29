"""The speech example's pieces: espeak-ng synthesis (and the message when it is missing), Whisper
log-mel features, LoRA adapters of which only the adapter tensors travel; and its --quick table."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pollen.compose import assemble
from pollen.config import make_config
from pollen.data import speech
from pollen.errors import DataError
from pollen.serialization import reply_to_bytes
from pollen.transport.inprocess import InProcessTransport
from pollen.types import state_nbytes

SPEECH = Path(__file__).resolve().parents[2] / "examples" / "speech"
sys.path.insert(0, str(SPEECH))
speech_app = runpy.run_path(str(SPEECH / "app.py"))


def test_a_missing_espeak_ng_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng anywhere
    with pytest.raises(DataError, match=r"'espeak-ng' program.*apt-get install espeak-ng"):
        speech.speak("seven")
    corpus = runpy.run_path(str(SPEECH / "speech_corpus.py"))
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        corpus["build"](tmp_path / "corpus", small=True, log=lambda _: None)
    assert not (tmp_path / "corpus" / "corpus.json").exists()


def test_espeak_speaks_at_16_khz_with_distinct_voices():
    a = speech.speak("seven", "en-us")
    b = speech.speak("seven", "fr+f3", speed=150, pitch=70)
    for clip in (a, b):
        assert clip.dtype == np.float32 and 0.3 * 16_000 < len(clip) < 1.2 * 16_000  # a word: under a second
        assert 0.05 < np.abs(clip).max() <= 1.0
    assert np.array_equal(a, speech.speak("seven", "en-us"))  # deterministic
    n = min(len(a), len(b))
    assert not np.allclose(a[:n], b[:n], atol=1e-2)


def test_read_wav_ignores_espeaks_streaming_frame_count():
    raw = (b"RIFF\xff\xff\xff\x7fWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x22\x56\x00\x00\x44\xac\x00\x00\x02\x00"
           b"\x10\x00data\xff\xff\xff\x7f" + np.array([0, 16384, -16384], dtype="<i2").tobytes())
    samples, rate = speech.read_wav(raw)
    assert rate == 22050
    np.testing.assert_allclose(samples, [0.0, 0.5, -0.5])


def test_log_mel_features_and_microphones():
    t = np.arange(16_000) / 16_000
    tone = lambda f: (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)  # noqa: E731
    low, high = tone(500), tone(6000)
    feats = speech.log_mel(np.stack([low, high, speech.telephone(high)]))
    assert feats.shape == (3, 40, 100) and feats.dtype == np.float32
    energy = feats.mean(axis=2)  # (3, 40) per mel band
    assert energy[0].argmax() < energy[1].argmax()  # a higher tone lights a higher mel band
    assert energy[2][energy[1].argmax()] < energy[1].max() - 0.2  # the telephone line cuts 6 kHz
    np.testing.assert_array_equal(speech.log_mel(np.stack([low])), feats[:1])
    noisy = speech.add_noise(low, 0.0, np.random.default_rng(0))
    assert abs(10 * np.log10(np.mean(low**2) / np.mean((noisy - low) ** 2))) < 0.5  # 0 dB SNR


def _tiny_site(path: Path, n: int, seed: int) -> None:
    g = np.random.default_rng(seed)
    np.savez(path, x_train=g.standard_normal((n, 40, 100)).astype(np.float32), y_train=g.integers(0, 20, n),
             x_test=g.standard_normal((4, 40, 100)).astype(np.float32), y_test=g.integers(0, 20, 4))


class Recording(InProcessTransport):
    def __init__(self, parties):
        super().__init__(parties)
        self.tasks, self.replies = [], []

    def submit(self, task):
        self.tasks.append(task)
        super().submit(task)

    def poll(self, timeout=None):
        reply = super().poll(timeout)
        if reply is not None:
            self.replies.append(reply)
        return reply


def test_only_the_adapter_tensors_travel(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in speech_app["whisper"]().state_dict().items()},
              str(tmp_path / "pretrained.safetensors"))
    for i in range(2):
        _tiny_site(tmp_path / f"inst{i}.npz", 8, i)
    app = speech_app["make_app"](tmp_path, "lora")
    full = speech_app["make_app"](tmp_path, "full")["model"]()
    model = app["model"]()
    trainable = [k for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.nn.Parameter) and v.requires_grad]
    # 3 encoder layers × (q_proj, v_proj) × (lora_A, lora_B), and the head's trainable copy (weight, bias)
    assert len([k for k in trainable if "lora_" in k]) == 12
    assert len([k for k in trainable if "modules_to_save" in k]) == 2
    assert len(trainable) == 14
    cfg = make_config({"data": {"parties": 2, "holdout": 0.0}, "federation": {"rounds": 2},
                       "train": {"optimizer": "adam", "lr": 0.003, "batch_size": 4},
                       "run": {"progress": False, "device": "cpu"}})
    run = assemble(cfg, app)
    trainer = run.trainer()
    transport = Recording(run.parties(trainer))
    state = run.initial_state()
    final = run.coordinator(transport).run(state)
    assert len(transport.tasks) == 2 * 2 + 2  # two rounds of two parties, then one evaluation each
    for task in transport.tasks:
        assert sorted(task.state) == sorted(trainable)  # the frozen pre-trained weights never go out
    fits = [r for r in transport.replies if r.kind == "fit"]
    assert len(fits) == 4 and all(r.ok for r in fits), [r.failure for r in fits]
    for reply in fits:
        assert sorted(reply.update.delta) == sorted(trainable)  # nor come back
        sent = len(reply_to_bytes(reply))
        adapters = state_nbytes(reply.update.delta)
        assert adapters <= sent < adapters + 4096  # the reply is the adapters plus a small header
    everything = sum(v.numel() * v.element_size() for v in full.state_dict().values())
    assert everything > 20 * state_nbytes({k: state[k] for k in trainable})
    frozen = [k for k in state if k not in trainable]
    assert all(np.array_equal(final[k], state[k]) for k in frozen)  # the base is the pre-trained one


def test_quick_table(tmp_path):
    compare = runpy.run_path(str(SPEECH / "compare.py"))
    assert compare["main"](["--quick", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "speech-quick.json").read_text())
    rows = result["rows"]
    assert len(rows) == 9
    for label, row in rows.items():
        assert sorted(row["accuracy"]) == ["0", "1", "2", "3", "4"], label  # every institution measured
        assert all(0.0 <= a <= 1.0 for a in row["accuracy"].values())
    full, adapters = rows["FedAvg, full model"], rows["FedAvg, adapters"]
    assert full["bytes_per_round"] > 20 * adapters["bytes_per_round"] > 0
    for label in ("FedBN-style (LayerNorms local)", "FedPer (head local)", "pFedMe (personal)", "Ditto (personal)"):
        assert rows[label]["bytes_per_round"] < full["bytes_per_round"] / 20, label
    assert [c[0] for c in result["checks"]][2].startswith("FedAvg, adapters: sends")
    assert len(result["checks"]) == 8  # the bar for the global and the personalised adapters
    assert "| FedAvg, adapters |" in (tmp_path / "out" / "speech-quick.md").read_text()
