"""Vertical federated learning: parties hold different columns of the same people.

- ``psi``: private set intersection of the parties' ids (ECDH over ristretto255).
- ``hetero_lr``: FATE-style hetero logistic regression (guest, hosts, a Paillier arbiter).
- ``split``: split learning with the app's bottom and top ``nn.Module``s.
- ``run``: simulation on one machine and deployment over gRPC (``pollen vertical …``).

See docs/vertical.md. Needs the ``vertical`` extra (``rbcl``, ``phe``, ``gmpy2``).

::

    from pollen.vertical import simulate_vertical
    result = simulate_vertical(model="lr", parties=3, epochs=10)
"""

from pollen.vertical.app import PartyTable, VerticalApp, VerticalContext, load_vertical_app
from pollen.vertical.config import VerticalConfig, make_vertical_config, vertical_config
from pollen.vertical.run import VerticalResult, build_party, serve_vertical, simulate_vertical

__all__ = ["PartyTable", "VerticalApp", "VerticalConfig", "VerticalContext", "VerticalResult", "build_party",
           "load_vertical_app", "make_vertical_config", "serve_vertical", "simulate_vertical", "vertical_config"]
