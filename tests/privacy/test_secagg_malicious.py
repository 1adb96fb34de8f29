"""A coordinator that lies, played against the real party code (pollen/privacy/secagg/party.py).

The test plays the coordinator by hand, stage by stage, with real ``LocalParty`` objects: every
attack of issue 12 (an empty peer list, split survivor sets, t = 1, asking for both shares, a
smaller round, substituted keys) is refused by the parties, and with the threshold the issue found
in our docs (t ≤ half, allowed only with --secagg-trust-coordinator) the split attack does recover
a victim's update — the threshold is what protects it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pollen.client.party import LocalParty, PartyTables, Shard
from pollen.errors import ConfigError
from pollen.privacy.secagg import SecAggParams, SecAggPlus, field, masks, shamir
from pollen.privacy.secagg import constants as C
from pollen.privacy.secagg.graph import graph_seed, harary, order_key, plan, round_degree
from pollen.privacy.secagg.identity import Trust, fingerprint, keys_message
from pollen.privacy.secagg.party import task_handlers
from pollen.transforms.base import Pipeline
from pollen.types import RoundConfig, Task, Update

D = 5_000


class FixedTrainer:
    def __init__(self, delta):
        self.delta = delta

    def fit(self, state, data, config, generator, *a, **kw):
        return Update(dict(self.delta), len(data), {"train_loss": 1.0})


class LyingCoordinator:
    """Drives the real parties through a round; each stage's message can be altered per party."""

    def __init__(self, n: int = 7, threshold: float = 2 / 3, trust: bool = False, seed: int = 0, trusts=None):
        self.params = SecAggParams(threshold=threshold, planned=n, trust_coordinator=trust, seed=seed)
        rng = np.random.default_rng(seed)
        self.ids = [str(i) for i in range(n)]
        self.deltas = {p: {"w": (rng.standard_normal(D) * 0.05).astype(np.float32)} for p in self.ids}
        pipeline = Pipeline((SecAggPlus(self.params),))
        tables = PartyTables(task_handlers=task_handlers())
        self.parties = {p: LocalParty(p, Shard(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long)),
                                      FixedTrainer(self.deltas[p]), pipeline=pipeline, tables=tables) for p in self.ids}
        for p, trust_ in (trusts or {}).items():
            self.parties[p].state[C.TRUST] = trust_
        self.k, self.t = plan(threshold, None, n)
        self.spec = field.choose(32, 1.0, n)
        self.rnd = 0

    # ------------------------------------------------------------ honest stages, with hooks to lie
    def advertise(self) -> None:
        self.rnd += 1
        state = {"w": np.zeros(D, np.float32)}
        self.keys = {}
        for p, party in self.parties.items():
            reply = party.handle(Task(p, "fit", self.rnd, state, RoundConfig(round=self.rnd)))
            assert reply.ok, reply.failure
            d = reply.update.delta
            self.keys[p] = {"enc": d[C.ENC_PK], "mask": d[C.MASK_PK], "id": d[C.IDENTITY], "sig": d[C.KEYS_SIG]}
        self.roster = {p: fingerprint(k["enc"].tobytes(), k["mask"].tobytes()) for p, k in self.keys.items()}
        self.graph = harary(self.ids, round_degree(self.k, len(self.ids)), graph_seed(self.params.seed, self.rnd))

    def ask(self, p: str, kind: str, arrays: dict, payload: dict):
        return self.parties[p].handle(Task(p, kind, self.rnd, arrays, RoundConfig(round=self.rnd,
                                                                                  extra={C.EXTRA: payload})))

    def share_keys(self, p: str, t: int | None = None, roster=None, keys=None, neighbours=None):
        keys = keys or self.keys
        neighbours = self.graph[p] if neighbours is None else neighbours
        arrays = {f"{C.PK_PREFIX}{j}/{x}": keys[j][x] for j in neighbours for x in ("enc", "mask", "id", "sig")}
        return self.ask(p, C.STAGE_SHARE_KEYS, arrays, {C.NEIGHBOURS: list(neighbours), C.THRESHOLD: t or self.t,
                                                         C.ROSTER: roster or self.roster})

    def all_share_keys(self) -> None:
        self.cts = {}
        for p in self.ids:
            reply = self.share_keys(p)
            assert reply.ok, reply.failure
            for name, ct in reply.update.delta.items():
                self.cts[(p, name[len(C.CT_PREFIX):])] = ct

    def masked_input(self, p: str, peers) -> object:
        arrays = {C.CT_PREFIX + j: self.cts[(j, p)] for j in peers}
        return self.ask(p, C.STAGE_MASKED_INPUT, arrays, {C.SURVIVORS: list(peers), C.FIELD: self.spec.to_dict(),
                                                           "weight": 1})

    def all_masked_input(self) -> None:
        self.masked = {}
        for p in self.ids:
            reply = self.masked_input(p, self.graph[p])
            assert reply.ok, reply.failure
            self.masked[p] = reply.update.delta[C.MASKED].view(np.uint32)

    def consistency(self, p: str, u3) -> object:
        return self.ask(p, C.STAGE_CONSISTENCY, {}, {C.SURVIVORS: list(u3)})

    def unmask(self, p: str, sigs: dict) -> object:
        return self.ask(p, C.STAGE_UNMASK, {C.SIG_PREFIX + j: s for j, s in sigs.items() if j in self.graph[p]}, {})

    # ------------------------------------------------------------ what the attacker can compute
    def recovers(self, victim: str, seed_shares: list[bytes], key_shares: list[bytes]) -> bool:
        """True when the shares rebuild the victim's seed and mask key, and with them its update."""
        try:
            seed = shamir.reconstruct(seed_shares[: self.t])
            sk = masks.private_from_bytes(shamir.reconstruct(key_shares[: self.t]))
        except Exception:
            return False
        if masks.public_bytes(sk) != self.keys[victim]["mask"].tobytes():
            return False
        y = self.masked[victim].copy()
        keyed = [(masks.derive(seed, C.INFO_SELF, self.rnd), -1)]
        for j in self.graph[victim]:
            pair = masks.derive(masks.agree(sk, self.keys[j]["mask"].tobytes()), C.INFO_PAIR, self.rnd)
            keyed.append((pair, -1 if order_key(victim) < order_key(j) else +1))
        masks.add_streams(y, keyed)
        got = field.dequantize(y, self.spec)
        return bool(np.max(np.abs(got - self.deltas[victim]["w"])) <= 2 * self.spec.error_bound)


def _failed(reply, words: str) -> None:
    assert not reply.ok and words in reply.failure, reply.failure


def test_an_honest_round_by_hand_unmasks_only_the_sum():
    """The harness itself: an honest coordinator gets the sum (and the parties agree)."""
    c = LyingCoordinator()
    c.advertise()
    c.all_share_keys()
    c.all_masked_input()
    sigs = {p: c.consistency(p, c.ids).update.delta[C.SURVIVORS_SIG] for p in c.ids}
    replies = {p: c.unmask(p, sigs) for p in c.ids}
    assert all(r.ok for r in replies.values())
    assert all(not any(n.startswith(C.KEY_SHARE_PREFIX) for n in r.update.delta) for r in replies.values())


def test_an_empty_peer_list_is_refused():
    """The issue's attack: tell the victim 'none of your neighbours survived' (it would mask with
    its self mask only), tell the neighbours 'it survived' (they reveal its seed): its update."""
    c = LyingCoordinator()
    c.advertise()
    c.all_share_keys()
    _failed(c.masked_input("0", []), "fewer than t − 1")
    _failed(c.masked_input("1", c.graph["1"][: c.t - 2]), "fewer than t − 1")  # one short of the threshold
    assert C.STATE not in c.parties["0"].state  # a refusal ends its part in the round
    _failed(c.masked_input("0", c.graph["0"]), "not the stage")  # and there is no second try
    assert c.masked_input("2", c.graph["2"][: c.t - 1]).ok  # t − 1 neighbours + itself = t holders: allowed


@pytest.mark.parametrize("camp", [3, 4])
def test_split_survivor_sets_are_refused(camp):
    """Tell some of the victim's share holders 'it survived' (they reveal its seed shares) and the
    others 'it dropped' (they reveal its mask-key shares). With t above half of the neighbourhood
    no two views can each gather t signatures: the smaller camp refuses, the victim stays masked."""
    c = LyingCoordinator()  # 7 parties, complete graph, t = 5
    c.advertise()
    c.all_share_keys()
    c.all_masked_input()
    victim = "0"
    alive, dropped = [victim, *c.ids[1:camp]], c.ids[camp:]
    without = [p for p in c.ids if p != victim]
    sigs = {}
    for p in alive:
        sigs[p] = c.consistency(p, c.ids).update.delta[C.SURVIVORS_SIG]
    for p in dropped:
        sigs[p] = c.consistency(p, without).update.delta[C.SURVIVORS_SIG]  # each signs what it was shown
    seed_shares, key_shares, refused = [], [], []
    for p in c.ids:
        reply = c.unmask(p, sigs)  # relay every signature: each party checks which agree with its view
        if not reply.ok:
            assert "signed the survivor set" in reply.failure or "does not verify" in reply.failure, reply.failure
            refused.append(p)
            continue
        d = reply.update.delta
        seed_shares += [d[C.SEED_SHARE_PREFIX + victim].tobytes()] if C.SEED_SHARE_PREFIX + victim in d else []
        key_shares += [d[C.KEY_SHARE_PREFIX + victim].tobytes()] if C.KEY_SHARE_PREFIX + victim in d else []
    assert refused  # the camp with fewer than t members
    assert not (len(seed_shares) >= c.t and len(key_shares) >= c.t)
    assert not c.recovers(victim, seed_shares, key_shares)


def test_with_t_at_most_half_the_split_attack_works():
    """The stated risk of --secagg-trust-coordinator: t = 3 of 7 (threshold 0.4, what our docs used
    to suggest). Both camps reach t: the coordinator rebuilds the victim's update exactly."""
    with pytest.raises(ConfigError, match="not more than half"):
        _secagg_step(secagg_threshold=0.4)
    c = LyingCoordinator(threshold=0.4, trust=True)
    assert c.t == 3
    c.advertise()
    c.all_share_keys()
    c.all_masked_input()
    victim, alive, dropped = "0", ["0", "1", "2"], ["3", "4", "5", "6"]
    sigs = {p: c.consistency(p, c.ids).update.delta[C.SURVIVORS_SIG] for p in alive}
    sigs.update({p: c.consistency(p, c.ids[1:]).update.delta[C.SURVIVORS_SIG] for p in dropped})
    seed_shares, key_shares = [], []
    for p in c.ids:  # each camp is shown only its own camp's signatures: every one verifies
        camp = alive if p in alive else dropped
        reply = c.unmask(p, {j: s for j, s in sigs.items() if j in camp})
        assert reply.ok, reply.failure
        d = reply.update.delta
        seed_shares += [d[C.SEED_SHARE_PREFIX + victim].tobytes()] if C.SEED_SHARE_PREFIX + victim in d else []
        key_shares += [d[C.KEY_SHARE_PREFIX + victim].tobytes()] if C.KEY_SHARE_PREFIX + victim in d else []
    assert c.recovers(victim, seed_shares, key_shares)


def test_a_threshold_of_one_or_a_smaller_round_is_refused():
    c = LyingCoordinator()
    c.advertise()
    _failed(c.share_keys("0", t=1), "fixed t = 5")
    # a round of the victim and one colluder: the graph it would get has 2 share holders, t = 5
    small = {p: c.roster[p] for p in ("1", "2")}
    _failed(c.share_keys("1", roster=small, neighbours=["2"]), "share holders")
    # neighbours other than the graph the round seed gives
    other = [p for p in c.ids if p not in ("3", "4")][:2]
    _failed(c.share_keys("3", neighbours=other), "not the")


def test_asking_for_both_shares_or_a_stage_twice_is_refused():
    c = LyingCoordinator()
    c.advertise()
    c.all_share_keys()
    c.all_masked_input()
    sigs = {p: c.consistency(p, c.ids).update.delta[C.SURVIVORS_SIG] for p in c.ids}
    _failed(c.consistency("1", c.ids[1:]), "not the stage")  # a second view after signing the first
    first = c.unmask("1", sigs)
    assert first.ok and not any(n.startswith(C.KEY_SHARE_PREFIX) for n in first.update.delta)
    _failed(c.unmask("1", sigs), "not the stage")  # the key shares, in a second request: never
    _failed(c.unmask("2", {p: s for p, s in sigs.items() if p in ("2", "3")}), "signed the survivor set")
    _failed(c.unmask("2", sigs), "not the stage")  # a refusal is final for the round
    # a stage skipped: unmask before the consistency round
    c2 = LyingCoordinator()
    c2.advertise()
    c2.all_share_keys()
    c2.all_masked_input()
    _failed(c2.unmask("0", {}), "not the stage")
    # a second advertisement for the same round (two secure sums of one update)
    _failed(c2.parties["0"].handle(Task("0", "fit", c2.rnd, {"w": np.zeros(D, np.float32)}, RoundConfig(round=c2.rnd))),
            "once")


def test_a_forged_survivor_signature_aborts():
    c = LyingCoordinator()
    c.advertise()
    c.all_share_keys()
    c.all_masked_input()
    sigs = {p: c.consistency(p, c.ids).update.delta[C.SURVIVORS_SIG] for p in c.ids}
    forged = dict(sigs)
    forged["3"] = sigs["4"]  # another party's signature under party 3's name
    _failed(c.unmask("0", forged), "does not verify")


def test_substituted_keys_are_refused_after_the_first_round():
    """Pinned mode: an honest first round pins every peer's identity key; a coordinator that later
    relays its own keys (to read the shares) is refused."""
    c = LyingCoordinator()
    c.advertise()
    c.all_share_keys()
    c.advertise()  # round 2
    mallory = Trust.pinned()
    enc = masks.public_bytes(masks.new_private_key())
    keys = {**c.keys}
    keys["1"] = {**keys["1"], "enc": np.frombuffer(enc, np.uint8)}  # the victim's key, not re-signed
    _failed(c.share_keys("0", keys=keys, roster={**c.roster, "1": fingerprint(enc, keys["1"]["mask"].tobytes())}),
            "does not verify")
    keys["1"] = {**keys["1"], "id": np.frombuffer(mallory.credential, np.uint8),  # re-signed by the coordinator
                 "sig": np.frombuffer(mallory.sign(keys_message(c.rnd, "1", enc, keys["1"]["mask"].tobytes())), np.uint8)}
    _failed(c.share_keys("2", keys=keys, roster={**c.roster, "1": fingerprint(enc, keys["1"]["mask"].tobytes())}),
            "another signing key")


def test_certified_identities_refuse_substitution_from_the_first_round(tmp_path):
    from pollen.transport.rpc.tls import make_certs

    certs = make_certs(tmp_path / "certs", [str(i) for i in range(7)])
    trusts = {str(i): Trust.certified(certs, str(i)) for i in range(7)}
    c = LyingCoordinator(trusts=trusts)
    c.advertise()
    mallory = Trust.pinned()  # the coordinator's own key: no certificate from the CA
    enc = masks.public_bytes(masks.new_private_key())
    mask = c.keys["1"]["mask"].tobytes()
    keys = {**c.keys, "1": {"enc": np.frombuffer(enc, np.uint8), "mask": c.keys["1"]["mask"],
                            "id": np.frombuffer(mallory.credential, np.uint8),
                            "sig": np.frombuffer(mallory.sign(keys_message(c.rnd, "1", enc, mask)), np.uint8)}}
    _failed(c.share_keys("0", keys=keys, roster={**c.roster, "1": fingerprint(enc, mask)}), "not a certificate")
    keys["1"]["id"] = c.keys["2"]["id"]  # another party's certificate
    _failed(c.share_keys("3", keys=keys, roster={**c.roster, "1": fingerprint(enc, mask)}), "presented as party 1")
    c.advertise()  # the refusals ended parties 0 and 3's round; in the next one the honest relay passes
    c.all_share_keys()
    c.all_masked_input()
    sigs = {p: c.consistency(p, c.ids).update.delta[C.SURVIVORS_SIG] for p in c.ids}
    assert all(c.unmask(p, sigs).ok for p in c.ids)


def test_a_deployed_party_refuses_a_weak_threshold_unless_its_operator_accepts_it(tmp_path, digits_cfg):
    from pollen.transport.rpc.party import PartyOptions, build_party
    from pollen.data import load_dataset, partition, write_shards

    ds = load_dataset("digits")
    write_shards(ds, partition(ds, "iid", 4, 0), tmp_path / "data", scheme="iid", seed=0)
    cfg = digits_cfg(privacy={"secagg": True, "secagg_threshold": 0.3, "secagg_trust_coordinator": True})
    opts = PartyOptions("1", "localhost:1", str(tmp_path / "data" / "party1"), insecure=True)
    with pytest.raises(ConfigError, match="not more than half"):
        build_party(opts, {"config": cfg.to_dict()})
    party = build_party(PartyOptions("1", "localhost:1", str(tmp_path / "data" / "party1"), insecure=True,
                                     secagg_trust_coordinator=True), {"config": cfg.to_dict()})
    assert C.TRUST in party.state


def _secagg_step(**privacy):
    from pollen.config import make_config
    from pollen.privacy.secagg.config import secagg_step

    return secagg_step(make_config({"data": {"dataset": "digits", "parties": 7}, "privacy": {"secagg": True, **privacy}}))
