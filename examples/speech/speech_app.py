"""Five institutions fine-tune one pre-trained speech model on spoken commands, with LoRA adapters
(the app's code; ``app.py`` is the app file to pass to ``pollen``, and this module has a name no
other example's module has, so that ``prepare.py`` and ``compare.py`` import it safely).

A small Whisper-architecture encoder (``transformers``' ``WhisperForAudioClassification`` built
from a config: no download) was pre-trained on a "public" institution's American voices
(``prepare.py``). Each institution hears the twenty words in its own accent, through its own
microphone, with its own vocabulary and amount of data (``speech_corpus.py``). Federated fine-tuning
trains LoRA adapters (and the classifier head) only: the pre-trained weights are frozen, every
party builds them itself, and only the adapter tensors travel.

    python examples/speech/prepare.py                 # synthesise the corpus, pre-train (~2 min)
    pollen simulate --app examples/speech/app.py      # FedAvg of the adapters, 5 institutions
    python examples/speech/compare.py                 # the comparison table (README.md)

``make_app(root, finetune=…, only=…)`` builds the variants the comparison runs: ``finetune`` =
``"lora"`` (adapters + head: the default), ``"lora+norm"`` (also the LayerNorms, kept local by
FedBN-style runs), ``"full"`` (every weight: full-model FedAvg); ``only=i`` is institution i alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speech_corpus import INSTITUTIONS, N_MELS, WORDS  # noqa: E402

from pollen.data import read_tensors  # noqa: E402
from pollen.errors import ConfigError, DataError, require  # noqa: E402
from pollen.models.adapters import lora  # noqa: E402

ROOT = HERE / "data"  # prepare.py writes the corpus and the pre-trained model here
CHECKPOINT = "pretrained.safetensors"
FINETUNE = ("lora", "lora+norm", "full")


def whisper() -> nn.Module:
    """The Whisper-architecture classifier, randomly initialised from a config (no download):
    conv stem + 3 transformer encoder layers (d_model 96, 4 heads) over 100 log-mel frames, mean
    pooling, a 64-unit projection and a 20-word classifier (387k parameters)."""
    transformers = require("transformers", "speech", "the speech example's Whisper model")
    transformers.logging.set_verbosity_error()
    config = transformers.WhisperConfig(
        num_mel_bins=N_MELS, d_model=96, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=384,
        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, max_source_positions=50,
        max_target_positions=8, vocab_size=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, num_labels=len(WORDS), classifier_proj_size=64, dropout=0.1)
    return Logits(transformers.WhisperForAudioClassification(config))


class Logits(nn.Module):
    """``net(input_features=x).logits``: (N, 40, 100) log-mel features → (N, 20) logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(input_features=x).logits


def load_pretrained(root: Path) -> nn.Module:
    """The model pre-trained on the public institution (every party loads the same file)."""
    from safetensors.torch import load_file

    path = Path(root) / CHECKPOINT
    if not path.is_file():
        raise DataError(f"{path} is missing: run `python {HERE / 'prepare.py'} --out {root}` first (it synthesises "
                        "the corpus with espeak-ng and pre-trains the model on the public institution)")
    model = whisper()
    model.load_state_dict(load_file(str(path)))
    return model


# The adapters: rank-4 LoRA on every attention layer's query and value projections, the classifier
# head trained in full.
LORA: dict[str, Any] = {"r": 4, "alpha": 8, "target_modules": ("q_proj", "v_proj"), "train": ("classifier",)}


def adapt(model: nn.Module, finetune: str) -> nn.Module:
    """``model`` as fine-tuning ``finetune`` trains it (see the module's docstring)."""
    if finetune == "full":
        return model
    model.net = lora(model.net, **LORA, also_train=("layer_norm",) if finetune == "lora+norm" else ())
    return model


def make_app(root: str | Path = ROOT, finetune: str = "lora", only: int | None = None) -> dict[str, Any]:
    """The app's names for one variant (a dict: ``pollen.simulate(app=make_app(...))``)."""
    if finetune not in FINETUNE:
        raise ConfigError(f"finetune={finetune!r}; choose one of {', '.join(FINETUNE)}")
    root = Path(root)

    def model() -> nn.Module:
        return adapt(load_pretrained(root), finetune)

    def load_data(ctx) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """This institution's clips: (training, test) features and word ids; its test speakers are
        never among its training speakers. Deployed: ``ctx.data_path`` is its own ``inst<i>.npz``."""
        index = only if only is not None else ctx.party_index
        if ctx.data_path is None and index >= len(INSTITUTIONS):
            raise ConfigError(f"the speech example has {len(INSTITUTIONS)} institutions; simulate it with "
                              f"--parties {len(INSTITUTIONS)}, not {ctx.num_parties}")
        path = ctx.data_path or root / f"inst{index}.npz"
        train = read_tensors(path, x="x_train", y="y_train")
        test = read_tensors(path, x="x_test", y="y_test")
        return (train.x, train.y), (test.x, test.y)

    return {"model": model, "load_data": load_data, "metrics": ["accuracy"],
            "config": {"data": {"parties": 1 if only is not None else len(INSTITUTIONS)},
                       "train": {"optimizer": "adam", "lr": 0.003, "batch_size": 32, "epochs": 1},
                       "federation": {"rounds": 20}}}


_default = make_app()
model, load_data, metrics, config = _default["model"], _default["load_data"], _default["metrics"], _default["config"]
__all__ = ["CHECKPOINT", "FINETUNE", "LORA", "ROOT", "Logits", "adapt", "config", "load_data", "load_pretrained", "make_app",
           "metrics", "model", "whisper"]
