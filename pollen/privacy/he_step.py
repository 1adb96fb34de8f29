"""CKKS encryption as the ``mask`` stage of the update pipeline (see ``pollen.privacy.he``).

Party: ``encode`` encrypts ``n_i · Δ_i`` with the public key. Coordinator: ``combine`` sums the
round's ciphertexts with the public context, then sends the encrypted sum (and nothing else) to a
key holder — a party of the round, through the same transport as every other task — which
decrypts it (task kind ``he_decrypt``) and answers with the plain sum. The coordinator divides by
``Σ n_i`` and hands one update to the aggregator. The step object never loads ``secret.ctx``:
only the party runtime does, into its own state, when it is asked to decrypt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pollen.errors import PrivacyError, RunError
from pollen.privacy import he
from pollen.transforms.base import StepContext, UpdateStep
from pollen.types import Reply, RoundConfig, Task, Update

DECRYPT_KIND = "he_decrypt"
SUM_KEY = "ckks.sum"


class CKKSEncrypt(UpdateStep):
    """Encrypt each party's weighted update; sum ciphertexts on the server; decrypt the sum only.

    Args:
        keys_dir: the directory ``pollen keys`` wrote (the server needs only ``public.ctx`` and
            ``keys.json`` there; parties also need ``secret.ctx`` to decrypt the sum).
        decrypt_timeout: seconds to wait for a key holder's answer (None: wait).
    """

    name = "ckks"
    stage = "mask"
    linear = True

    def __init__(self, keys_dir: str | Path, decrypt_timeout: float | None = None) -> None:
        self.keys_dir = Path(keys_dir)
        self.info = he.read_info(self.keys_dir)
        self.decrypt_timeout = decrypt_timeout
        self._public: Any = None
        self._exchange: dict[str, float] = {}

    def public_context(self) -> Any:
        """The public context (public key, no secret key), loaded once."""
        if self._public is None:
            self._public = he.load_context(self.keys_dir / he.PUBLIC_FILE, secret=False)
        return self._public

    # ------------------------------------------------------------ party side
    def encode(self, update: Update, ctx: StepContext) -> Update:
        """Encrypt ``num_examples · delta`` (FedAvg's weight), batched into ciphertext slots."""
        if update.codec:
            raise PrivacyError(f"party {ctx.party_id}: CKKS cannot encrypt a compressed update "
                               f"(codec {sorted(update.codec)}); turn compression off with --he")
        layout = he.Layout.of(update.delta)
        vec = layout.flatten(update.delta) * float(update.num_examples)
        he.check_headroom(vec, self.info, ctx.party_id)
        packed = he.encrypt_vector(self.public_context(), vec, int(self.info["slots"]))
        return update.with_(delta=packed, codec={"ckks": {"layout": layout.to_dict()}})

    # ------------------------------------------------------------ server side
    def report(self, round: int) -> dict[str, float]:
        """Bytes of the decryption exchange (the round loop adds them to its counts) and the
        coordinator's seconds spent summing ciphertexts."""
        out, self._exchange = self._exchange, {}
        return out

    def combine(self, updates: list[Update], parties: Sequence[str], round: int, transport: Any) -> list[Update]:
        """Sum the encrypted updates, have a key holder decrypt the sum, return one plain update.

        Raises:
            PrivacyError: updates that are not CKKS packages of one layout.
            RunError: no party of the round could decrypt the sum.
        """
        if not updates:
            return updates
        layouts = {str(u.codec.get("ckks", {}).get("layout")) for u in updates}
        if len(layouts) != 1 or "ckks" not in updates[0].codec:
            raise PrivacyError("the round's updates are not CKKS ciphertexts of one model layout; "
                               "every party must run with --he and the same keys")
        layout = he.Layout.from_dict(updates[0].codec["ckks"]["layout"])
        t0 = time.perf_counter()
        total = he.sum_encrypted(self.public_context(), [u.delta for u in updates])
        seconds_sum = time.perf_counter() - t0
        plain = self._ask_key_holder(total, layout, parties, round, transport)
        # the decryption exchange: the encrypted sum down to the key holder, the plain sum back
        self._exchange = {"bytes_down": float(sum(a.nbytes for a in total.values())), "bytes_up": float(plain.nbytes),
                          "he_sum_seconds": seconds_sum, "he_ciphertexts": float(len(total[he.OFFSETS_KEY]) - 1)}
        n = sum(u.num_examples for u in updates)
        limit = float(self.info["max_abs_sum"]) / 2
        if not np.all(np.isfinite(plain)) or (plain.size and float(np.max(np.abs(plain))) >= limit):
            raise PrivacyError(f"round {round}: the decrypted sum reaches the CKKS bound {limit:.3g} (overflow); "
                               "create keys with a smaller --scale-bits or clip updates")
        delta = layout.unflatten(plain / max(n, 1))
        from pollen.server.coordinator import mean_metrics

        return [Update(delta=delta, num_examples=n, metrics=mean_metrics(updates), codec={})]

    def _ask_key_holder(self, total: dict[str, np.ndarray], layout: he.Layout, parties: Sequence[str],
                        round: int, transport: Any) -> np.ndarray:
        from pollen.server.coordinator import collect  # the round loop's own collector

        config = RoundConfig(round=round, extra={"ckks_size": layout.size})
        failures = []
        for pid in parties:
            replies, _ = collect(transport, [Task(pid, DECRYPT_KIND, round, total, config)], self.decrypt_timeout)
            reply = replies[0] if replies else None
            if reply is not None and reply.ok and reply.update is not None and SUM_KEY in reply.update.delta:
                return np.asarray(reply.update.delta[SUM_KEY], dtype=np.float64)
            failures.append(f"{pid}: {reply.failure if reply is not None else 'no reply'}")
        raise RunError(f"round {round}: no key holder decrypted the CKKS sum ({'; '.join(failures)})")


def handle_decrypt(party: Any, task: Task) -> Reply:
    """Party side of ``he_decrypt``: decrypt the aggregate with this party's secret context."""
    step = next((s for s in party.pipeline.steps if isinstance(s, CKKSEncrypt)), None)
    if step is None:
        raise PrivacyError(f"party {party.party_id} was asked to decrypt but runs without --he")
    secret = party.state.get("ckks_secret")
    if secret is None:
        secret = he.load_context(step.keys_dir / he.SECRET_FILE, secret=True)
        party.state["ckks_secret"] = secret
    vec = he.decrypt_vector(secret, task.state, int(task.config.extra["ckks_size"]))
    update = Update(delta={SUM_KEY: vec}, num_examples=0)
    return Reply(party.party_id, DECRYPT_KIND, task.round, update=update)


def task_handlers() -> dict[str, Any]:
    """The ``he_decrypt`` task kind and its party-side handler (for ``PartyTables``)."""
    return {DECRYPT_KIND: handle_decrypt}
