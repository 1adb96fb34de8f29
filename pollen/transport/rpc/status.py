"""``pollen status``: ask a coordinator for its parties and progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from pollen.errors import TransportError
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import grpc_options
from pollen.transport.rpc.tls import ADMIN_NAME, read_file


def fetch_status(server: str, certs_dir: str | Path, insecure: bool = False, server_name: str | None = None,
                 timeout: float = 10.0) -> dict[str, Any]:
    """The coordinator's status as a dict (uses the ``admin`` certificate).

    Raises:
        TransportError: the coordinator cannot be reached or refuses.
    """
    options = grpc_options()
    if insecure:
        channel = grpc.insecure_channel(server, options=options)
    else:
        d = Path(certs_dir)
        creds = grpc.ssl_channel_credentials(read_file(d / "ca.pem", "CA certificate"),
                                             read_file(d / f"{ADMIN_NAME}.key", "admin key"),
                                             read_file(d / f"{ADMIN_NAME}.pem", "admin certificate"))
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(server, creds, options=options)
    with channel:
        try:
            r = pb_grpc.FederationStub(channel).Status(pb.StatusRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise TransportError(f"cannot get status from {server}: {exc.code().name}: {exc.details()}") from None
    return {"round": r.round, "rounds": r.rounds, "phase": r.phase, "last_accuracy": r.last_accuracy,
            "rejected_messages": r.rejected_messages, "bytes_in": r.bytes_in, "bytes_out": r.bytes_out,
            "protocol_version": r.protocol_version,
            "parties": [{"party_id": p.party_id, "alive": p.alive, "seconds_since_heartbeat": round(p.seconds_since_heartbeat, 2),
                         "tasks_done": p.tasks_done, "peer": p.peer} for p in r.parties]}


def format_status(s: dict[str, Any]) -> str:
    """A human-readable status."""
    alive = [p for p in s["parties"] if p["alive"]]
    lines = [f"phase {s['phase']}: round {s['round']} of {s['rounds']}, last accuracy {s['last_accuracy']:.4f}",
             f"parties connected: {len(alive)} (known {len(s['parties'])}); rejected messages: {s['rejected_messages']}; "
             f"bytes in {s['bytes_in']:,}, out {s['bytes_out']:,}",
             f"{'party':>8} {'alive':>5} {'last seen':>10} {'tasks':>6}  peer"]
    for p in s["parties"]:
        lines.append(f"{p['party_id']:>8} {('yes' if p['alive'] else 'no'):>5} {p['seconds_since_heartbeat']:>9.1f}s "
                     f"{p['tasks_done']:>6}  {p['peer']}")
    return "\n".join(lines)
