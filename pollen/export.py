"""Models back out of a run: ``pollen.load_model(run_dir)`` and ``pollen export RUN --format …``.

A run folder records how to rebuild its model without loading any data: the built-in model's
name, input shape and classes, or the app's reference (whose ``model()`` builds it), plus the
shape of one input example for tracing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pollen.errors import ConfigError, RunError, require


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not (run_dir / "model.safetensors").is_file() or not path.is_file():
        raise RunError(f"{run_dir} holds no finished run (model.safetensors and summary.json are written when a run "
                       "ends); runs are written under runs/<name>/")
    return json.loads(path.read_text())


def load_model(run_dir: str | Path, app: Any = None) -> Any:
    """The trained ``torch.nn.Module`` of a finished run (in eval mode, on the CPU).

    Args:
        run_dir: ``runs/<name>``.
        app: the app to rebuild the model with, when its file moved since the run (default: the
            reference the run recorded).

    Raises:
        RunError: not a finished run.
        AppError: the run's app cannot be imported any more (pass ``app=``).
    """
    from safetensors.numpy import load_file

    from pollen.client.trainer import load_numpy_state

    d = Path(run_dir)
    spec = _summary(d).get("model", {})
    if spec.get("builtin") and app is None:
        from pollen.models import build_model

        model = build_model(spec["builtin"], tuple(spec["input_shape"]), int(spec["num_classes"]))
        if spec.get("dp_sgd"):
            from pollen.privacy.dpsgd import make_private_model

            model = make_private_model(model)
    else:
        from pollen.compose import assemble
        from pollen.config import load_toml, make_config

        model = assemble(make_config(load_toml(d / "config.toml")), app).new_model()
    load_numpy_state(model, load_file(str(d / "model.safetensors")))
    return model.eval()


def example_input(run_dir: Path) -> Any:
    """A zero tensor shaped like one input batch of the run's model (batch of 1)."""
    import torch

    spec = _summary(run_dir).get("model", {})
    shape = spec.get("input", {}).get("shape") or ([1, *spec["input_shape"]] if spec.get("input_shape") else None)
    if shape is None:
        raise ConfigError(f"{run_dir} does not record its model's input shape (runs whose data is a DataLoader of "
                          "dicts); export the model from Python with torch.onnx.export / torch.jit.trace")
    dtype = getattr(torch, spec.get("input", {}).get("dtype", "float32"))
    return torch.zeros(shape, dtype=dtype)


def export_model(run_dir: str | Path, fmt: str = "torchscript", out: str | Path | None = None) -> Path:
    """Write the run's trained model as TorchScript (``model.pt``) or ONNX (``model.onnx``).

    Raises:
        ConfigError: an unknown format.
        MissingExtraError: ONNX without the ``onnx`` extra.
    """
    import torch

    d = Path(run_dir)
    model = load_model(d)
    x = example_input(d)
    if fmt == "torchscript":
        path = Path(out) if out else d / "model.pt"
        traced = torch.jit.trace(model, x)
        traced.save(str(path))
        return path
    if fmt == "onnx":
        require("onnx", "onnx", "ONNX export (pollen export --format onnx)")
        path = Path(out) if out else d / "model.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        return path
    raise ConfigError(f"unknown export format {fmt!r}; choose torchscript or onnx")
