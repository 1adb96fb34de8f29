"""Split learning for vertically partitioned data.

Vepakomma et al., "Split learning for health: Distributed deep learning without sharing raw
patient data", arXiv:1812.00564, 2018 (the vertically partitioned configuration: one bottom
model per feature holder, their outputs concatenated into the label holder's top model). Noise on
the activations follows Titcombe et al., "Practical defences against model inversion attacks for
split neural networks", arXiv:2104.05743, 2021 (Laplace there; Gaussian here).

One mini-batch B::

    p (every feature holder): h_p = bottom_p(X_p[B]) (+ N(0, σ²) noise)    host → guest
    G: out = top([h_0, h_1, …]); loss(out, y_B); backward                   guest → each host: ∂loss/∂h_p
    p: h_p.backward(∂loss/∂h_p); optimizer step

The guest's own bottom runs inside the guest. Without noise the gradients every bottom and the
top receive are those of the same network trained on the joined data (``tests/vertical``). What
leaves a host is its activations (a function of its features) and what comes back is their
gradient (a function of the labels): split learning reveals more than hetero LR's encrypted
protocol; the noise trades accuracy for harder inversion (docs/vertical.md).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pollen.errors import ConfigError, ProtocolError
from pollen.types import Task

if TYPE_CHECKING:
    from pollen.vertical.driver import Exchange
    from pollen.vertical.party import VerticalParty


@dataclass
class SplitState:
    """A feature holder's bottom model (and, at the guest, the top) with their optimizers."""

    bottom: Any
    optimizer: Any
    noise: float
    generator: Any
    top: Any = None
    top_optimizer: Any = None
    loss: Any = None
    pending: Any = None  # the activations of the batch in flight (with their graph)
    out_width: int = 0
    widths: dict[str, int] = field(default_factory=dict)

    def model_state(self) -> dict[str, np.ndarray]:
        out = {f"bottom.{k}": v.detach().cpu().numpy() for k, v in self.bottom.state_dict().items()}
        if self.top is not None:
            out.update({f"top.{k}": v.detach().cpu().numpy() for k, v in self.top.state_dict().items()})
        return out


def _optimizer(params: Any, name: str, lr: float) -> Any:
    import torch

    return torch.optim.Adam(params, lr=lr) if name == "adam" else torch.optim.SGD(params, lr=lr)


def handlers(party: VerticalParty) -> dict[str, Callable[[Task], dict[str, np.ndarray]]]:
    """The party's split-learning steps."""
    import torch

    def state() -> SplitState:
        if party.split is None:
            raise ProtocolError("split-learning step before v.split.init")
        return party.split

    def init(task: Task) -> dict[str, np.ndarray]:  # every feature holder: build its bottom
        if party.x_train is None or party.app.bottom_model is None:
            raise ConfigError("split learning needs the app's bottom_model(ctx) (and top_model(ctx) at the guest)")
        from pollen.app import call_user

        extra = task.config.extra
        party.ctx.num_features = party.x_train.shape[1]
        torch.manual_seed(int(extra["seed"]))  # the initial weights follow the run seed and the party
        bottom = call_user(party.app.bottom_model, "bottom_model(ctx)", party.ctx)
        with torch.no_grad():
            width = int(np.prod(bottom(torch.from_numpy(party.x_train[:1])).shape[1:]))
        gen = torch.Generator().manual_seed(secrets.randbits(63))  # activation noise: seeded from the OS's CSPRNG
        party.split = SplitState(bottom, _optimizer(bottom.parameters(), extra["optimizer"], float(extra["lr"])),
                                 float(extra["noise"]), gen, out_width=width)
        return {"width": np.array([width], np.int64)}

    def top_init(task: Task) -> dict[str, np.ndarray]:  # guest: the top model on the bottoms' widths
        if party.app.top_model is None:
            raise ConfigError("split learning needs the app's top_model(ctx) at the guest")
        from pollen.app import call_user

        st, extra = state(), task.config.extra
        widths = {str(k): int(v) for k, v in extra["widths"].items()}
        party.ctx.bottom_outputs = widths
        torch.manual_seed(int(extra["seed"]))
        st.top = call_user(party.app.top_model, "top_model(ctx)", party.ctx)
        st.top_optimizer = _optimizer(st.top.parameters(), extra["optimizer"], float(extra["lr"]))
        st.widths = widths
        st.loss = party.app.loss
        return {}

    def forward(task: Task) -> dict[str, np.ndarray]:  # host: activations of the batch (noised)
        st = state()
        b = _batch(task, len(party.x_train))
        st.bottom.train()
        h = st.bottom(torch.from_numpy(party.x_train[b])).flatten(1)
        st.pending = h
        sent = h.detach()
        if st.noise > 0:
            sent = sent + st.noise * torch.randn(sent.shape, generator=st.generator)
        return {"h": sent.numpy().astype(np.float32)}

    def top(task: Task) -> dict[str, np.ndarray]:  # guest: top forward/backward, gradients for the hosts
        st = state()
        b = _batch(task, len(party.x_train))
        st.bottom.train()
        st.top.train()
        own = st.bottom(torch.from_numpy(party.x_train[b])).flatten(1)
        received = {}
        for pid in sorted(st.widths, key=int):
            if pid == party.party_id:
                continue
            arr = task.state.get(f"h.{pid}")
            if arr is None or arr.shape != (len(b), st.widths[pid]):
                raise ProtocolError(f"activations of party {pid}: expected ({len(b)}, {st.widths[pid]})")
            received[pid] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).requires_grad_(True)
        parts = [own if pid == party.party_id else received[pid] for pid in sorted(st.widths, key=int)]
        out = st.top(torch.cat(parts, dim=1))
        loss = _loss(st, out, party.y_train[b])
        st.optimizer.zero_grad(set_to_none=True)
        st.top_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        st.optimizer.step()
        st.top_optimizer.step()
        reply = {f"grad.{pid}": t.grad.numpy().astype(np.float32) for pid, t in received.items()}
        reply["loss"] = np.array([float(loss.detach())], np.float64)
        return reply

    def backward(task: Task) -> dict[str, np.ndarray]:  # host: backpropagate the guest's gradient, step
        st = state()
        if st.pending is None:
            raise ProtocolError("backward without a forward")
        grad = task.state["grad"]
        if grad.shape != tuple(st.pending.shape):
            raise ProtocolError(f"gradient of shape {list(grad.shape)} for activations {list(st.pending.shape)}")
        st.optimizer.zero_grad(set_to_none=True)
        st.pending.backward(torch.from_numpy(np.ascontiguousarray(grad, dtype=np.float32)))
        st.optimizer.step()
        st.pending = None
        return {}

    def score(task: Task) -> dict[str, np.ndarray]:  # host: activations of the held-out rows (noised alike)
        st = state()
        st.bottom.eval()
        with torch.no_grad():
            h = st.bottom(torch.from_numpy(party.x_test)).flatten(1)
            if st.noise > 0:
                h = h + st.noise * torch.randn(h.shape, generator=st.generator)
        return {"h": h.numpy().astype(np.float32)}

    def evaluate(task: Task) -> dict[str, np.ndarray]:  # guest: metrics on the held-out rows
        st = state()
        st.bottom.eval()
        st.top.eval()
        with torch.no_grad():
            parts = [st.bottom(torch.from_numpy(party.x_test)).flatten(1) if pid == party.party_id
                     else torch.from_numpy(np.ascontiguousarray(task.state[f"h.{pid}"], dtype=np.float32))
                     for pid in sorted(st.widths, key=int)]
            out = st.top(torch.cat(parts, dim=1))
            loss = float(_loss(st, out, party.y_test))
        y = party.y_test
        pred = (out.squeeze(1) > 0).numpy() if out.shape[1] == 1 else out.argmax(1).numpy()
        result = {"accuracy": np.array([float(np.mean(pred.astype(np.int64) == y.astype(np.int64)))]),
                  "loss": np.array([loss])}
        if out.shape[1] == 1:
            from pollen.vertical.hetero_lr import binary_metrics

            result["auc"] = binary_metrics(out.squeeze(1).numpy().astype(np.float64), y).get("auc", np.array([float("nan")]))
        return result

    return {"v.split.init": init, "v.split.top_init": top_init, "v.split.forward": forward, "v.split.top": top,
            "v.split.backward": backward, "v.split.score": score, "v.split.evaluate": evaluate}


def _loss(st: SplitState, out: Any, y: np.ndarray) -> Any:
    import torch

    if st.loss is not None:
        target = torch.from_numpy(y)
        return st.loss(out, target.float().view_as(out) if out.shape[1] == 1 else target.long())
    if out.shape[1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), torch.from_numpy(y).float())
    return torch.nn.functional.cross_entropy(out, torch.from_numpy(y).long())


def _batch(task: Task, n: int) -> np.ndarray:
    b = np.asarray(task.state["batch"], dtype=np.int64)
    if b.ndim != 1 or not b.size or b.min() < 0 or b.max() >= n:
        raise ProtocolError(f"batch: expected positions in [0, {n}), got {b.size} values")
    return b


# ------------------------------------------------------------ driver side
def train(ex: Exchange, cfg: Any, n_train: int, emit: Callable[[int, dict[str, Any]], None]) -> None:
    """The epochs of split learning: per mini-batch the hosts' forward, the guest's top step, the hosts' backward."""
    v = cfg.vertical
    guest, hosts = cfg.guest, cfg.hosts
    holders = [guest, *hosts]
    opts = {"optimizer": v.optimizer, "lr": v.lr, "noise": v.noise}
    widths = ex.call({p: ("v.split.init", {}, {**opts, "seed": cfg.run.seed * 1000 + int(p)}) for p in holders})
    ex.call({guest: ("v.split.top_init", {}, {**opts, "seed": cfg.run.seed * 1000 + 999,
                                              "widths": {p: int(r["width"][0]) for p, r in widths.items()}})})
    for epoch in range(1, v.epochs + 1):
        t0, up0, down0 = time.perf_counter(), ex.bytes_up, ex.bytes_down
        order = np.random.default_rng([cfg.run.seed, epoch]).permutation(n_train)
        losses = []
        for start in range(0, n_train, v.batch_size):
            batch = order[start : start + v.batch_size].astype(np.int64)
            acts = ex.call({h: ("v.split.forward", {"batch": batch}, {}) for h in hosts}) if hosts else {}
            top = ex.call({guest: ("v.split.top", {"batch": batch, **{f"h.{h}": r["h"] for h, r in acts.items()}}, {})})[guest]
            losses.append(float(top["loss"][0]) * len(batch))
            if hosts:
                ex.call({h: ("v.split.backward", {"grad": top[f"grad.{h}"]}, {}) for h in hosts})
        record: dict[str, Any] = {"train_loss": sum(losses) / n_train}
        if v.test_fraction > 0:
            scores = ex.call({h: ("v.split.score", {}, {}) for h in hosts}) if hosts else {}
            got = ex.call({guest: ("v.split.evaluate", {f"h.{h}": r["h"] for h, r in scores.items()}, {})})[guest]
            record.update({k: float(a[0]) for k, a in got.items() if a.size and math.isfinite(float(a[0]))})
        record.update(seconds=time.perf_counter() - t0, bytes_up=ex.bytes_up - up0, bytes_down=ex.bytes_down - down0)
        emit(epoch, record)
