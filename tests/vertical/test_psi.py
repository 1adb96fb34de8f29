"""Private set intersection: the exact intersection, in one aligned order, and nothing else.

The "nothing else" tests play a curious party that follows the protocol, keeps its own key and
holds a dictionary of every id that exists; it tries to recognise the other side's ids in what it
received. A control run shows the same attack recovering everything from plain salted hashes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

pytest.importorskip("rbcl", reason="the vertical extra (rbcl) is not installed")

from pollen.errors import ProtocolError  # noqa: E402
from pollen.vertical import psi  # noqa: E402

UNIVERSE = [f"customer-{i}" for i in range(2000)]


def sets(seed=0):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(UNIVERSE))
    guest = [UNIVERSE[i] for i in perm[:300]]  # 300 ids
    host1 = [UNIVERSE[i] for i in perm[150:650]]  # 500 ids, 150 shared with the guest
    host2 = [UNIVERSE[i] for i in np.concatenate([perm[100:250], perm[900:1000]])]  # 250 ids
    return guest, host1, host2


def test_two_parties_exact_intersection_in_one_order():
    guest, host, _ = sets()
    g_rows, h_rows = psi.intersect(guest, {"1": host})
    assert [guest[i] for i in g_rows] == [host[i] for i in h_rows["1"]]  # aligned: the same id on each row
    assert set(guest[i] for i in g_rows) == set(guest) & set(host)
    assert len(g_rows) == 150 and len(set(g_rows.tolist())) == 150


def test_three_parties_different_sizes():
    guest, host1, host2 = sets(1)
    g_rows, h_rows = psi.intersect(guest, {"1": host1, "2": host2}, threads=2)
    want = set(guest) & set(host1) & set(host2)
    assert set(guest[i] for i in g_rows) == want and len(want) == 100
    assert [guest[i] for i in g_rows] == [host1[i] for i in h_rows["1"]] == [host2[i] for i in h_rows["2"]]


def test_empty_and_integer_ids():
    g_rows, h_rows = psi.intersect([1, 2, 3], {"1": ["4", "5"]})
    assert len(g_rows) == 0 and len(h_rows["1"]) == 0
    g_rows, h_rows = psi.intersect([1, 2, 3], {"1": ["3", "2", "9"]})  # 7 and "7" are the same id
    assert sorted([1, 2, 3][i] for i in g_rows) == [2, 3]


def _dictionary(salt, key=None):
    """What a curious party can compute for every id that exists: H(salt‖id) (and ^key)."""
    points = psi.hash_to_group(psi.id_bytes(UNIVERSE), salt)
    table = {p: i for p, i in zip(points, UNIVERSE)}
    if key is not None:
        table.update({p: i for p, i in zip(key.blind(points), UNIVERSE)})
    return table


def test_a_curious_host_learns_only_the_intersection():
    guest, host, _ = sets(2)
    salt = psi.new_salt()
    receiver = psi.PsiReceiver(psi.id_bytes(guest), salt)
    sender = psi.PsiSender(psi.id_bytes(host), salt)
    y = sender.blinded_ids()
    x = receiver.blinded_ids("1")  # everything the host receives in the exchange …
    x2 = sender.reblind(x)
    receiver.match("1", y, x2)
    _, positions = receiver.align()
    rows = sender.rows(positions["1"])  # … and the alignment
    # The host tries its dictionary (plain and under its own key) on the guest's blinded ids.
    table = _dictionary(salt, sender.key)
    recognised = {table[p] for p in psi.from_array(x) if p in table} | {table[p] for p in psi.from_array(x2) if p in table}
    assert recognised == set()
    learned = {host[i] for i in rows}  # the host can name exactly its own common rows
    assert learned == set(guest) & set(host)
    assert len(x) == len(guest)  # and it learns the guest's set size (the protocol says so)


def test_a_curious_guest_learns_only_the_intersection():
    guest, host, _ = sets(3)
    salt = psi.new_salt()
    sender = psi.PsiSender(psi.id_bytes(host), salt)
    y = sender.blinded_ids()
    key = psi.PsiKey()  # the guest's key, kept for the attack
    x2 = sender.reblind(psi.to_array(key.blind(psi.hash_to_group(psi.id_bytes(guest), salt))))
    z = key.blind(psi.from_array(y))  # H(y)^(k_S k_R): comparable only with what the host re-blinded
    matched = {guest[i] for i, t in enumerate(psi.from_array(x2)) if t in set(z)}
    assert matched == set(guest) & set(host)
    table = _dictionary(salt, key)
    recognised = {table[p] for p in [*psi.from_array(y), *z] if p in table}
    assert recognised == set()  # none of the host's other ids is recognised


def test_control_plain_salted_hashes_leak_everything():
    """The same dictionary attack against unblinded salted hashes names every id: the attack is real."""
    _, host, _ = sets(4)
    salt = psi.new_salt()
    sent = psi.hash_to_group(psi.id_bytes(host), salt)
    table = _dictionary(salt)
    assert {table[p] for p in sent} == set(host)


def test_per_session_salt_unlinks_sessions():
    ids = psi.id_bytes(UNIVERSE[:50])
    a = psi.hash_to_group(ids, psi.new_salt())
    b = psi.hash_to_group(ids, psi.new_salt())
    assert not set(a) & set(b)
    same = psi.new_salt()
    assert psi.hash_to_group(ids, same) == psi.hash_to_group(ids, same)
    assert hashlib.sha512(b"".join(a)).digest() != hashlib.sha512(b"".join(b)).digest()


def test_commutative_in_a_prime_order_group():
    p = psi.hash_to_group([b"x"], psi.new_salt())
    k1, k2 = psi.PsiKey(), psi.PsiKey()
    assert k1.blind(k2.blind(p)) == k2.blind(k1.blind(p))


def test_values_that_are_no_group_element_are_refused():
    sender = psi.PsiSender(psi.id_bytes(["a", "b"]), psi.new_salt())
    bad = np.full((2, 32), 0xFF, np.uint8)  # not a canonical ristretto255 encoding
    with pytest.raises(ProtocolError, match="not a valid ristretto255"):
        sender.reblind(bad)
    with pytest.raises(ProtocolError, match="shape"):
        sender.reblind(np.zeros((2, 31), np.uint8))
    with pytest.raises(ProtocolError, match="distinct positions"):
        sender.rows(np.array([0, 0]))
