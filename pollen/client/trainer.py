"""Local training: E epochs of mini-batch SGD/Adam with the app's loss, and evaluation with its
metrics; or the app's own ``train``/``evaluate`` functions, which take over the loop entirely.

On in-memory tensors (``Shard``) batches are slices of a tensor permuted once per epoch (no
DataLoader, no per-sample Python); a ``Dataset`` goes through a seeded ``DataLoader``. The
``nn.Module`` is built once, moved to its device once, and reused for every party a process hosts.
"""

from __future__ import annotations

import contextlib
import math
import hashlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn

from pollen.client.data import LoaderSource, Shard, Source, batch_size_of, iter_batches, source, to_device
from pollen.errors import ConfigError, ModelError
from pollen.models.augment import Augment
from pollen.types import EvalResult, ModelState, RoundConfig, Update

# A hook run after ``loss.backward()`` and before ``optimizer.step()`` (SCAFFOLD's correction, …).
GradHook = Callable[[nn.Module], None]


def state_to_numpy(model: nn.Module) -> ModelState:
    """A copy of the model's ``state_dict`` as numpy arrays (float and integer buffers by name)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
    """Copy ``state`` into the model's tensors in place (``state`` is never modified).

    Raises:
        ModelError: names or shapes that do not fit the model.
    """
    own = model.state_dict()  # tensors on the model's device: copy_ moves the values there
    if strict and set(own) != set(state):
        missing = sorted(set(own) - set(state))[:5]
        extra = sorted(set(state) - set(own))[:5]
        raise ModelError(f"state does not fit the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, value in state.items():
            if name not in own:
                raise ModelError(f"state has tensor {name!r}, which the model does not have")
            target = own[name]
            if tuple(target.shape) != tuple(value.shape):
                raise ModelError(f"tensor {name!r}: model has shape {tuple(target.shape)}, state has {value.shape}")
            target.copy_(torch.from_numpy(np.asarray(value)))


def frozen_names(model: nn.Module) -> tuple[str, ...]:
    """State names of ``model``'s parameters that do not train (``requires_grad=False``), in order."""
    return tuple(k for k, v in model.state_dict(keep_vars=True).items()
                 if isinstance(v, nn.Parameter) and not v.requires_grad)


def digest_of(state: Mapping[str, object]) -> str:
    """A BLAKE2b digest of tensors' names, shapes, dtypes and bytes (in name order)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        a = np.ascontiguousarray(state[name].detach().cpu().numpy() if isinstance(state[name], torch.Tensor)
                                 else np.asarray(state[name]))
        h.update(f"{name}|{a.shape}|{a.dtype}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(config: RoundConfig, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, dtype)`` when ``config.extra["autocast"]`` asks for bf16/fp16
    (set by ``--autocast``); a no-op context otherwise. fp16 runs without loss scaling.

    Raises:
        ConfigError: an unknown dtype name.
    """
    name = config.extra.get("autocast", "off")
    if name in (None, "off"):
        return contextlib.nullcontext()
    if name not in AUTOCAST_DTYPES:
        raise ConfigError(f"autocast dtype {name!r} is unknown; choose off, {', '.join(AUTOCAST_DTYPES)}")
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES[name])


def make_optimizer(params, config: RoundConfig) -> torch.optim.Optimizer:
    """The local optimizer a round config asks for."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(f"unknown local optimizer {config.optimizer!r}; choose 'sgd' or 'adam'")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a device.

    Raises:
        ConfigError: CUDA asked for but not available (names what torch sees).
    """
    text = str(name or "cpu")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {text}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu "
                              "or auto, or install a CUDA build of torch==2.13.0")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def forward(model: nn.Module, inputs: object) -> torch.Tensor:
    """``model`` on a batch's inputs: a tensor, a tuple of tensors (positional) or a dict (keywords)."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


def as_source(data: object) -> Source:
    """``data`` as a trainer source (``(x, y)`` tensors are accepted as they are)."""
    return source(data)


class _Gathered:
    """Evaluation outputs and targets of a whole pass, copied batch by batch into buffers allocated
    once (when the number of examples is known) or concatenated at the end (when it is not)."""

    def __init__(self, expected: int) -> None:
        self.expected, self.pos, self.filled = expected, 0, 0  # filled: rows written into the buffers
        self.out: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        b = int(out.shape[0])
        if self.expected and self.out is None:
            self.out = torch.empty((self.expected, *out.shape[1:]), dtype=torch.float32)
            self.y = torch.empty((self.expected, *y.shape[1:]), dtype=y.dtype)
        if self.out is not None and self.y is not None and self.pos + b <= self.expected:
            self.out[self.pos : self.pos + b] = out
            self.y[self.pos : self.pos + b] = y
            self.filled = self.pos + b
        else:
            self.parts.append((out.float().cpu(), y.cpu()))
        self.pos += b

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.out is not None and self.y is not None and not self.parts:
            return self.out[: self.pos], self.y[: self.pos]
        # more rows than announced: the buffers' rows, then the batches that did not fit
        head = [(self.out[: self.filled], self.y[: self.filled])] if self.out is not None and self.y is not None else []
        return torch.cat([o for o, _ in head + self.parts]), torch.cat([t for _, t in head + self.parts])


class Trainer:
    """Fits and evaluates one reusable model on a party's data.

    Args:
        model: the network; moved to ``device`` once and reused across parties and rounds.
        augment: optional batch augmentation ``augment(x, generator)`` of each training batch.
        eval_batch_size: batch size for evaluation (128 was fastest on a 2-core CPU).
        loss: ``loss(outputs, targets)`` → mean loss (None: cross-entropy).
        metrics: name → ``pollen.metrics.Metric`` computed on evaluation (None: accuracy with the
            default loss, nothing otherwise).
        device: where the model trains (a ``torch.device`` or a name).
        app_train: the app's own ``train(model, data, config, ctx)`` (replaces the local loop).
        app_evaluate: the app's own ``evaluate(model, data, ctx)`` → ``{"loss": …, metric: …}``.
        context: the app ``Context`` passed to ``app_train``/``app_evaluate``.
    """

    def __init__(self, model: nn.Module, augment: Augment | None = None, eval_batch_size: int = 128, *,
                 loss: Callable | None = None, metrics: Mapping[str, object] | None = None,
                 device: torch.device | str | None = None, app_train: Callable | None = None,
                 app_evaluate: Callable | None = None, context: object = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.augment = augment
        self.eval_batch_size = eval_batch_size
        self.default_loss = loss is None
        self.loss_fn = nn.CrossEntropyLoss() if loss is None else loss
        if metrics is None:
            from pollen.metrics import resolve_metrics

            metrics = resolve_metrics(["accuracy"] if loss is None else [])
        self.metrics = dict(metrics)
        self.app_train, self.app_evaluate, self.context = app_train, app_evaluate, context
        self._frozen: tuple[str, ...] | None = None
        self._frozen_digest: str | None = None

    # ------------------------------------------------------------ fit
    def fit(
        self,
        global_state: Mapping[str, np.ndarray],
        data: object,
        config: RoundConfig,
        generator: torch.Generator,
        grad_hooks: tuple[GradHook, ...] = (),
        context: object = None,
    ) -> Update:
        """Train from ``global_state`` on ``data`` and return the delta ``local − global``.

        Args:
            global_state: the model to start from (not modified).
            data: a ``Shard``, ``(x, y)`` tensors, a ``DatasetSource`` or a ``LoaderSource``.
            config: epochs, optimizer, lr, batch size, proximal mu, shared names.
            generator: seeded source of shuffling and augmentation randomness.
            grad_hooks: functions run on the model between backward and step.
            context: the party's app ``Context`` (for the app's own ``train``; default: the trainer's).
        """
        data = as_source(data)
        load_numpy_state(self.model, global_state, strict=False)
        self.model.train()
        if self.app_train is not None:
            metrics, n = self._fit_app(data, config, grad_hooks, context or self.context)
        else:
            metrics, n = self._fit_loop(data, config, generator, grad_hooks)
        return Update(delta=self.delta(global_state, config), num_examples=n, metrics=metrics)

    def delta(self, global_state: Mapping[str, np.ndarray], config: RoundConfig) -> ModelState:
        """``local − global`` for the shared names (all of ``global_state``'s when None)."""
        local = self.model.state_dict()
        names = config.shared_names if config.shared_names is not None else tuple(global_state)
        return {k: local[k].detach().cpu().numpy() - global_state[k] for k in names}

    def _fit_loop(self, data: Source, config: RoundConfig, generator: torch.Generator,
                  grad_hooks: tuple[GradHook, ...]) -> tuple[dict[str, float], int]:
        model, device = self.model, self.device
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(params, config)
        mu = config.proximal_mu
        anchors = [p.detach().clone() for p in params] if mu > 0 else None
        track_accuracy = self.default_loss  # cross-entropy on class targets: accuracy comes for free
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen, steps = 0, 0

        def step(xb: object, yb: torch.Tensor) -> None:
            nonlocal total_loss, correct, seen, steps
            opt.zero_grad(set_to_none=True)
            with autocast(config, device.type):
                outputs = forward(model, xb)
                loss = self.loss_fn(outputs, yb)
            if anchors is not None:
                # FedProx (Li et al. 2020): + mu/2 · ||w − w_global||²
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))
                (loss + 0.5 * mu * prox).backward()
            else:
                loss.backward()
            for hook in grad_hooks:
                hook(model)
            opt.step()
            b = batch_size_of(xb)
            steps += 1
            total_loss += loss.detach().double() * b
            if track_accuracy:
                correct += (outputs.detach().argmax(1) == yb).sum()
            seen += b

        for xb, yb in self.batches(data, config, generator):
            step(xb, yb)
        if seen == 0:
            raise ModelError("cannot train on an empty dataset (the data gave no batches)")
        n = len(data) if not isinstance(data, LoaderSource) or data.sized else seen // max(config.epochs, 1)
        loss_avg = float(total_loss) / max(seen, 1)
        if not math.isfinite(loss_avg):
            raise ModelError(f"local training diverged (loss {loss_avg}); lower the learning rate")
        metrics = {"train_loss": loss_avg, "steps": float(steps)}
        if track_accuracy:
            metrics["train_accuracy"] = int(correct) / max(seen, 1)
        return metrics, n

    def batches(self, data: Source, config: RoundConfig, generator: torch.Generator) -> Iterator[tuple[object, torch.Tensor]]:
        """``config.epochs`` epochs of shuffled, augmented training batches ``(inputs, targets)`` on the
        trainer's device: slices of one permutation per epoch for in-memory tensors (no DataLoader),
        a seeded DataLoader otherwise. Local loops of strategies (pFedMe) iterate the same batches.

        Raises:
            ModelError: the data is empty.
        """
        device, bs = self.device, config.batch_size
        if isinstance(data, Shard):
            x, y = data.tensors()
            x, y = to_device(x, device), to_device(y, device)
            n = int(x.shape[0])
            if n == 0:
                raise ModelError("cannot train on an empty dataset")
            for _ in range(config.epochs):
                order = torch.randperm(n, generator=generator)
                for start in range(0, n, bs):
                    idx = order[start : start + bs]
                    if idx.device != x.device:
                        idx = idx.to(x.device)
                    xb = x[idx]
                    yield (self.augment(xb, generator) if self.augment is not None else xb), y[idx]
            return
        if isinstance(data, LoaderSource) and data.sized and len(data) == 0:
            raise ModelError("cannot train on an empty dataset")
        for _ in range(config.epochs):
            for xb, yb in iter_batches(data, bs, generator):
                xb, yb = to_device(xb, device), to_device(yb, device)
                if self.augment is not None and isinstance(xb, torch.Tensor):
                    xb = self.augment(xb, generator)
                yield xb, yb

    def frozen_names(self) -> tuple[str, ...]:
        """Names of the model's frozen parameters (``requires_grad=False``): no party trains them, so
        they never travel; every party builds them with ``model()`` (a pre-trained base)."""
        if self._frozen is None:
            self._frozen = frozen_names(self.model)
        return self._frozen

    def frozen_digest(self) -> str:
        """A digest of the frozen parameters' values (they never change), to check that a party's
        ``model()`` built the same frozen base as the coordinator's."""
        if self._frozen_digest is None:
            own = self.model.state_dict()
            self._frozen_digest = digest_of({k: own[k] for k in self.frozen_names()})
        return self._frozen_digest

    def _fit_app(self, data: Source, config: RoundConfig, grad_hooks: tuple[GradHook, ...],
                 context: object) -> tuple[dict[str, float], int]:
        from pollen.app import call_user

        if grad_hooks or config.proximal_mu > 0:
            raise ConfigError("your app's train() runs its own loop, which cannot add this strategy's proximal term "
                              "or gradient correction (FedProx, SCAFFOLD); use fedavg, fedadam, … or drop train()")
        out = call_user(self.app_train, "train(model, data, config, ctx)", self.model, data.raw, config, context)
        out = dict(out or {})
        n = int(out.pop("num_examples", 0) or len(data))
        if n <= 0:
            raise ModelError("your app's train() trained on no examples (return {'num_examples': N} when the data "
                             "has no len())")
        metrics: dict[str, float] = {}
        for k, v in out.items():
            if isinstance(v, (int, float, np.floating, np.integer)) or (isinstance(v, torch.Tensor) and v.numel() == 1):
                metrics[k if k.startswith("train_") or k == "steps" else f"train_{k}"] = float(v)
        loss = metrics.get("train_loss")
        if loss is not None and not math.isfinite(loss):
            raise ModelError(f"local training diverged (loss {loss}); lower the learning rate")
        return metrics, n

    # ------------------------------------------------------------ evaluate
    @torch.no_grad()
    def evaluate(self, state: Mapping[str, np.ndarray] | None, data: object, context: object = None) -> EvalResult:
        """Loss and metrics of ``state`` (or the current model when None) on ``data``."""
        data = as_source(data)
        model = self.model
        if state is not None:
            load_numpy_state(model, state, strict=False)
        model.eval()
        if self.app_evaluate is not None:
            return self._evaluate_app(data, context or self.context)
        device = self.device
        total_loss, n = 0.0, 0
        # Outputs and targets are gathered for the metrics (an AUC needs them all) into one buffer
        # each, sized once: keeping every batch's small output alive instead fragmented the heap
        # between the large activations and grew the process by ~25 MB a round on W1.
        gathered = _Gathered(len(data) if not isinstance(data, LoaderSource) or data.sized else 0)
        if isinstance(data, Shard):
            x, y = data.tensors()
            batches = ((x[s : s + self.eval_batch_size], y[s : s + self.eval_batch_size])
                       for s in range(0, int(x.shape[0]), self.eval_batch_size))
        else:
            batches = iter_batches(data, self.eval_batch_size, None)
        for xb, yb in batches:
            xb, yb = to_device(xb, device), to_device(yb, device)
            out = forward(model, xb)
            b = batch_size_of(xb)
            if self.default_loss:
                total_loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
            else:
                total_loss += float(self.loss_fn(out, yb)) * b
            n += b
            if self.metrics:
                gathered.add(out.detach(), yb.detach())
        values: dict[str, float] = {}
        if self.metrics and n:
            out_all, y_all = gathered.result()
            values = {name: float(m.fn(out_all, y_all)) for name, m in self.metrics.items()}  # type: ignore[attr-defined]
        return EvalResult(loss=total_loss / max(n, 1), accuracy=values.get("accuracy"), num_examples=n, metrics=values)

    def _evaluate_app(self, data: Source, context: object) -> EvalResult:
        from pollen.app import AppError, call_user

        out = call_user(self.app_evaluate, "evaluate(model, data, ctx)", self.model, data.raw, context)
        if not isinstance(out, Mapping):
            raise AppError(f"your app's evaluate() must return a dict like {{'loss': 0.3, 'auc': 0.9}}, "
                           f"got {type(out).__name__}")
        out = dict(out)
        n = int(out.pop("num_examples", 0) or len(data))
        loss = float(out.pop("loss", float("nan")))
        values = {k: float(v) for k, v in out.items()}
        return EvalResult(loss=loss, accuracy=values.get("accuracy"), num_examples=n, metrics=values)
