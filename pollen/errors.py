"""Pollen's exception tree.

Every error a user can cause is a ``PollenError``; the CLI prints its message (never a traceback)
and exits with status 2. Messages say what was expected, what came, and how to fix it.

::

    PollenError
    ├── ConfigError          a bad key or value in a RunConfig, TOML file or flag
    ├── DataError            a missing, corrupt or unusable dataset or shard
    ├── ModelError           an unknown model name or a state that does not fit the model
    ├── StrategyError        a strategy configuration its math cannot handle
    ├── PrivacyError         an impossible privacy setting or an exhausted budget
    ├── TransportError       a transport failure (connection, protocol, authentication)
    │   └── ProtocolError    a message that fails validation (shape, dtype, round, party id)
    ├── PartyFailure         one party failed one stage of a round (carries party id and stage)
    ├── RunError             a run that cannot continue (too few replies, nothing to resume)
    └── MissingExtraError    an optional dependency is not installed (names the pip extra)
"""

from __future__ import annotations


class PollenError(Exception):
    """Base class of every error Pollen raises on purpose."""


class ConfigError(PollenError):
    """A configuration key or value is invalid."""


class DataError(PollenError):
    """A dataset or shard is missing, corrupt or unusable."""


class ModelError(PollenError):
    """A model name is unknown or a state does not match the model."""


class StrategyError(PollenError):
    """A strategy is configured in a way its math cannot handle."""


class PrivacyError(PollenError):
    """A privacy setting is impossible or a privacy budget is exhausted."""


class TransportError(PollenError):
    """A transport could not deliver or receive a message."""


class ProtocolError(TransportError):
    """A message failed validation before use."""


class RunError(PollenError):
    """A run cannot continue."""


class PartyFailure(PollenError):
    """One party failed one stage of a round.

    Args:
        party_id: the failing party.
        stage: where it failed (``fit``, ``evaluate``, ``transport``, ``validate``, ...).
        reason: a human-readable cause.
    """

    def __init__(self, party_id: str, stage: str, reason: str) -> None:
        super().__init__(f"party {party_id} failed at {stage}: {reason}")
        self.party_id = party_id
        self.stage = stage
        self.reason = reason


class MissingExtraError(PollenError):
    """An optional dependency is missing.

    Args:
        package: the import name that failed.
        extra: the ``pollen-fl`` extra that installs it.
        feature: what the user asked for that needs it.
    """

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'pollen-fl[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(package: str, extra: str, feature: str):
    """Import an optional dependency or raise ``MissingExtraError`` naming its extra."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingExtraError(package, extra, feature) from exc
