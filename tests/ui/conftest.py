"""Fixtures for the dashboard, control API and tracking tests: small digits federations."""

from __future__ import annotations

import pytest


@pytest.fixture
def tokens():
    from pollen.ui.auth import Tokens

    return Tokens({"r" * 20: "viewer"}, {"c" * 20: "alice"})
