"""SIGTERM/SIGINT stop the coordinator after the checkpoint in progress (issue 12, item 7); a
quorum wait ends and says who is missing."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

import pollen.server.checkpoint as ckpt
from pollen.server import Checkpointer
from pollen.server.shutdown import Stopped, deferred_signals, stop_on_signals


@pytest.fixture
def handlers():
    restore = stop_on_signals()
    yield
    restore()


def test_a_signal_raises_stopped_with_its_name(handlers):
    with pytest.raises(Stopped) as err:
        os.kill(os.getpid(), signal.SIGTERM)
    assert err.value.name == "SIGTERM" and isinstance(err.value, KeyboardInterrupt)


def test_a_signal_during_a_checkpoint_waits_until_it_is_in_place(handlers, tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path)
    real = ckpt.save_file
    sent = []

    def save_and_get_killed(arrays, path):
        real(arrays, path)
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # arrives between the model and the rest

    monkeypatch.setattr(ckpt, "save_file", save_and_get_killed)
    with pytest.raises(Stopped):
        ck.save(1, {"w": np.ones(3, np.float32)}, {}, {"round": 1})
    assert sent and ck.load()[0] == 1  # the checkpoint was finished and verifies


def test_deferral_does_not_hide_an_error_of_the_block(handlers):
    with pytest.raises(ValueError):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the block's own error wins")
    with pytest.raises(Stopped):  # the held stop is not lost: the next deferral ends with it
        with deferred_signals():
            pass


def test_a_quorum_wait_ends_and_names_who_is_missing(caplog):
    from pollen.transport.rpc.hub import GrpcTransport

    hub = GrpcTransport(60.0, min_parties=3, quorum_timeout=0.3, members=["0", "1", "2"])
    hub.join("1", "test")
    with caplog.at_level(logging.WARNING, logger="pollen.transport.grpc"):
        assert hub.available() == ["1"]
    assert "waiting for --min-parties=3: 1 connected (missing: 0, 2)" in caplog.text
    assert "going on with them" in caplog.text
    hub.close()
