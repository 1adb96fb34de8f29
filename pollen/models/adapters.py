"""Low-rank adapters (LoRA: Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models",
ICLR) on a pre-trained model, with ``peft``.

``lora(model, …)`` freezes every weight of ``model`` and adds trainable low-rank matrices
``W + (α/r)·B·A`` to the named linear layers, plus trainable copies of the modules in ``train``
(a classifier head). Frozen tensors never travel in Pollen (each party builds them itself with
``model()`` and checks a digest of them), so with an app whose ``model()`` returns ``lora(…)`` only
the adapter tensors go to the parties and come back: federated fine-tuning of a large pre-trained
model at a fraction of its bytes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch.nn as nn

from pollen.errors import ModelError, require


def lora(model: nn.Module, r: int = 4, alpha: float = 8.0, target_modules: Sequence[str] = ("q_proj", "v_proj"),
         train: Sequence[str] = (), dropout: float = 0.0, also_train: Sequence[str] = ()) -> nn.Module:
    """``model`` with LoRA adapters of rank ``r`` on ``target_modules``; everything else frozen.

    Args:
        model: the pre-trained network (its weights are frozen in place).
        r: the adapters' rank.
        alpha: LoRA's scaling α (the update is scaled by α / r).
        target_modules: names (suffixes) of the linear layers that get adapters.
        train: modules trained in full besides the adapters (a new classifier head).
        dropout: dropout on the adapters' input.
        also_train: substrings of parameter names made trainable too (``layer_norm``: FedBN-style
            normalisation kept per party).

    Raises:
        MissingExtraError: peft is not installed (the 'speech' extra).
        ModelError: no module matches ``target_modules``.
    """
    peft = require("peft", "speech", "LoRA adapters")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                             modules_to_save=list(train) or None)
    try:
        with warnings.catch_warnings():  # peft calls a transformers method that warns it is renamed
            warnings.simplefilter("ignore", FutureWarning)
            wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"LoRA: {exc}") from None
    for name, p in wrapped.named_parameters():
        if any(s in name for s in also_train):
            p.requires_grad_(True)
    return wrapped


def adapter_names(model: nn.Module) -> list[str]:
    """State names of the tensors that train (and so travel): adapters and modules trained in full."""
    return [k for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, nn.Parameter) and v.requires_grad]
