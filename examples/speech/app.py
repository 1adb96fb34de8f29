"""Five institutions fine-tune one pre-trained speech model on spoken commands, with LoRA adapters.

The app Pollen runs (``model``, ``load_data``, ``metrics``, ``config``); the code is in
``speech_app.py``, beside this file. A small Whisper-architecture encoder was pre-trained on a
"public" institution's voices (``prepare.py``); federated fine-tuning trains LoRA adapters (and the
classifier head) only, and only the adapter tensors travel.

    python examples/speech/prepare.py                 # synthesise the corpus, pre-train (~2 min)
    pollen simulate --app examples/speech/app.py      # FedAvg of the adapters, 5 institutions
    python examples/speech/compare.py                 # the comparison table (README.md)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech_app import *  # noqa: E402,F403  (model, load_data, metrics, config, make_app, whisper, …)
