"""API tokens: a read-only token and a control token, distinct, each with a name that the run's
history records with every command.

A token file is TOML::

    [read]
    viewer = "…"        # may read everything the dashboard shows
    [control]
    operator = "…"      # may also pause, resume, stop, reconfigure, remove parties, start runs

Without a file, fresh tokens are drawn from a CSPRNG (``secrets``) and printed once at start-up;
with ``--ui-token-file`` a missing file is created (mode 0600) with fresh tokens.
"""

from __future__ import annotations

import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pollen.errors import ConfigError

READ, CONTROL = "read", "control"
MIN_LENGTH = 16


@dataclass(frozen=True)
class Tokens:
    """Token → name, per role."""

    read: dict[str, str]
    control: dict[str, str]

    def who(self, token: str | None) -> tuple[str, str] | None:
        """``(name, role)`` of ``token``, or None. Compares in constant time against every token."""
        found = None
        given = (token or "").encode()
        for role, table in ((CONTROL, self.control), (READ, self.read)):
            for value, name in table.items():
                if hmac.compare_digest(value.encode(), given) and found is None:
                    found = (name, role)
        return found


def new_tokens() -> Tokens:
    """A fresh read token and a fresh control token (32 bytes each from ``secrets``)."""
    return Tokens({secrets.token_urlsafe(32): "viewer"}, {secrets.token_urlsafe(32): "operator"})


def write_tokens(tokens: Tokens, path: Path) -> None:
    """Write a token file readable by its owner only."""
    lines = ["# pollen dashboard tokens: [read] may look, [control] may also steer", "[read]"]
    lines += [f'{name} = "{value}"' for value, name in tokens.read.items()]
    lines += ["", "[control]"] + [f'{name} = "{value}"' for value, name in tokens.control.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")


def load_tokens(path: str | Path) -> Tokens:
    """Read a token file.

    Raises:
        ConfigError: not TOML, a missing section, a short token, or one token in both roles.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"token file {p}: cannot read it ({exc}); expected [read] and [control] tables of "
                          "name = \"token\"") from None
    tables = {}
    for role in (READ, CONTROL):
        table = data.get(role)
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"token file {p}: no [{role}] table with at least one name = \"token\" line")
        for name, value in table.items():
            if not isinstance(value, str) or len(value) < MIN_LENGTH:
                raise ConfigError(f"token file {p}: [{role}] {name}: a token must be a string of at least "
                                  f"{MIN_LENGTH} characters")
        tables[role] = {v: k for k, v in table.items()}
    if set(tables[READ]) & set(tables[CONTROL]):
        raise ConfigError(f"token file {p}: a token appears in both [read] and [control]; they must differ")
    return Tokens(tables[READ], tables[CONTROL])


def tokens_for(path: str | Path | None) -> tuple[Tokens, str]:
    """The tokens to use, and the line to print at start-up.

    ``path`` None: fresh tokens, printed. An existing file: read. A missing file: created.
    """
    if path is None:
        t = new_tokens()
        return t, (f"read-only token: {next(iter(t.read))}\n"
                   f"control token:   {next(iter(t.control))}\n(shown once; use --ui-token-file FILE to keep them)")
    p = Path(path)
    if p.exists():
        return load_tokens(p), f"tokens read from {p}"
    t = new_tokens()
    write_tokens(t, p)
    return t, f"tokens written to {p} (mode 0600)"
