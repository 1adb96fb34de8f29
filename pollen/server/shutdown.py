"""Stopping a coordinator cleanly: SIGTERM and SIGINT, and the disk errors an operator can fix.

``pollen server`` installs :func:`stop_on_signals`: SIGTERM (``kill``, ``docker stop``, Kubernetes)
and SIGINT (Ctrl-C) then raise :class:`Stopped` in the main thread, except while a round's checkpoint
and history line are being written (:func:`deferred_signals`), where the stop waits until both are
in place.
The round in progress is abandoned (its redo after ``--resume`` is the same, sampling and
randomness deriving from (seed, round)); the server tells its parties and exits.

Disk errors (full, read-only, no permission) become one :class:`RunError` line naming what could
not be written and the fix (:func:`disk_error`).
"""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pollen.errors import RunError

DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.EIO: "an input/output error (a failing disk?)"}


class Stopped(KeyboardInterrupt):
    """The coordinator was asked to stop by a signal.

    Attributes:
        signum: the signal (``signal.SIGTERM``, ``signal.SIGINT``).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """``SIGTERM`` or ``SIGINT``."""
        return signal.Signals(self.signum).name


class _Deferral:
    depth = 0
    pending: int | None = None


_deferral = _Deferral()


def _handler(signum: int, frame: object) -> None:
    if _deferral.depth > 0:
        _deferral.pending = signum  # raised when the checkpoint in progress is in place
        return
    raise Stopped(signum)


def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Callable[[], None]:
    """Make ``signals`` raise :class:`Stopped` in the main thread (not inside a checkpoint write).

    Returns:
        A function that puts the previous handlers back.
    """
    before = {s: signal.signal(s, _handler) for s in signals}

    def restore() -> None:
        for s, h in before.items():
            signal.signal(s, h)

    return restore


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold a :class:`Stopped` from :func:`stop_on_signals` until the block is done (the block is
    not interrupted; the stop is raised right after it, unless the block raised)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferral.depth += 1
    try:
        yield
    finally:
        _deferral.depth -= 1
    if _deferral.depth == 0 and _deferral.pending is not None:
        signum, _deferral.pending = _deferral.pending, None
        raise Stopped(signum)


def disk_error(exc: OSError, where: str | Path, what: str) -> RunError:
    """One line for an ``OSError`` met while writing ``what`` in ``where``: the cause and the fix."""
    cause = DISK_ERRORS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return RunError(f"cannot write {what} in {where}: {cause} ({exc.strerror or exc}); free space or make the folder "
                    "writable (or choose another --runs-dir), then continue with --resume: every round before it is "
                    "saved")


def is_disk_error(exc: BaseException) -> bool:
    """True for the ``OSError``s an operator fixes on the disk (full, read-only, no permission, I/O)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRORS
