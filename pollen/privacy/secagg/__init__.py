"""Secure aggregation after SecAgg+ (Bell et al. 2020) on Bonawitz et al. 2017, with the latter's
checks against a coordinator that lies: the coordinator learns the sum of the parties' updates and
nothing else. See ``docs/secure-aggregation.md``.

Modules: ``field`` (quantisation into Z_{2^bits} with a range check), ``shamir`` (t-of-n sharing),
``masks`` (X25519, HKDF, AES-CTR masks, AES-GCM shares), ``graph`` (the k-regular neighbour
graph, the parameters fixed at join), ``identity`` (Ed25519 signing identities, certified or
pinned), ``constants`` (stage names and message keys), ``party`` / ``protocol`` (the two sides),
``step`` (the pipeline's ``mask`` stage).
"""

from __future__ import annotations

from pollen.privacy.secagg.protocol import SecAggParams, SecureSum
from pollen.privacy.secagg.step import SecAggPlus

__all__ = ["SecAggParams", "SecAggPlus", "SecureSum"]
