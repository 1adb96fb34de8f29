"""Messages as chunk streams: a JSON header plus a safetensors payload, cut below gRPC's limit.

A message is ``(header, payload)``: ``header`` a small JSON object (what the message is: kind,
round, party id, round config, …) and ``payload`` the tensors in the safetensors layout (raw
little-endian buffers, dtype and shape in its own JSON header; never pickle; ``tensors.py``). On the wire it is a
stream of ``Chunk`` messages; the first carries the header and the payload's total size.

Receiving checks the declared size against a limit, grows its buffer only with the bytes that
arrive (a declared size allocates nothing), refuses a stream that brings more or fewer bytes than
declared (truncated), and counts the bytes actually received.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pollen.errors import ProtocolError
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc.tensors import Encoded

PROTOCOL_VERSION = 1
CHUNK_BYTES = 3 * 1024 * 1024  # below gRPC's default 4 MiB message limit, framing included
GRPC_MESSAGE_LIMIT = 8 * 1024 * 1024  # both sides accept messages up to this (one chunk + slack)
MAX_HEADER_BYTES = 1024 * 1024
# Bytes one upload may have in flight towards the coordinator (its HTTP/2 receive window) when big
# models stream: gRPC otherwise grows each stream's window with its bandwidth-delay estimate, and on
# a busy coordinator that estimate runs to tens of MB per upload, held in memory while the fold
# catches up (benchmarks/RESULTS.md, "Coordinator memory with a 2.5 GB model"). 4 MiB per stream
# allows 40 MB/s per party at 100 ms of round trip.
RECEIVE_WINDOW = 4 * 1024 * 1024


def grpc_options(max_message: int = GRPC_MESSAGE_LIMIT) -> list[tuple[str, int]]:
    """Channel/server options shared by both sides."""
    return [("grpc.max_send_message_length", max_message), ("grpc.max_receive_message_length", max_message)]


def window_options(window: int | None) -> list[tuple[str, int]]:
    """Server options that fix each stream's receive window at ``window`` bytes (no growth by
    bandwidth-delay probing); none for None."""
    return [] if window is None else [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", int(window))]


@dataclass(frozen=True)
class Message:
    """One assembled message.

    Attributes:
        header: the decoded JSON header.
        payload: the tensor bytes (decoded tensors are views into it).
        wire_bytes: bytes of the protobuf chunks that carried it (what crossed the wire).
        session: the session token of the first chunk (uploads only).
    """

    header: dict[str, Any]
    payload: bytearray
    wire_bytes: int
    session: str = ""


def to_chunks(header: Mapping[str, Any], body: bytes | Encoded, session: str = "",
              chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.Chunk]:
    """Cut a message into ``Chunk``s (the first carries the header and the total size).

    Args:
        header: the JSON header.
        body: the payload: raw bytes, or tensors laid out by ``tensors.Encoded`` (streamed
            straight from the arrays' memory).
        session: the sender's session token (uploads).
        chunk_bytes: payload bytes per chunk.
    """
    if isinstance(body, Encoded):
        size, pieces = body.size, body.chunks(chunk_bytes)
    else:
        view = memoryview(body)
        size, pieces = len(view), (bytes(view[i : i + chunk_bytes]) for i in range(0, max(len(view), 1), chunk_bytes))
    first = True
    for piece in pieces:
        if first:
            yield pb.Chunk(session=session, header_json=json.dumps(dict(header)), total_size=size, data=piece)
            first = False
        else:
            yield pb.Chunk(data=piece)


def assemble(chunks: Iterable[pb.Chunk], max_bytes: int) -> Message | None:
    """Join a chunk stream into a ``Message``; ``None`` for an empty stream.

    Raises:
        ProtocolError: no or bad header, a declared size over ``max_bytes``, or a stream that
            carries more or fewer bytes than it declared (truncated).
    """
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        return None
    header = read_header(first)
    return read_payload(first, header, it, max_bytes)


def read_header(first: pb.Chunk) -> dict[str, Any]:
    """The JSON header of a message's first chunk.

    Raises:
        ProtocolError: too long, not JSON, or not an object.
    """
    if len(first.header_json) > MAX_HEADER_BYTES:
        raise ProtocolError(f"message header of {len(first.header_json)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(first.header_json)
    except ValueError as exc:
        raise ProtocolError(f"message header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"message header must be a JSON object, got {type(header).__name__}")
    return header


def read_payload(first: pb.Chunk, header: dict[str, Any], rest: Iterator[pb.Chunk], max_bytes: int,
                 on_chunk: Callable[[int], None] | None = None) -> Message:
    """The rest of a message whose first chunk (and header) was read: at most ``max_bytes`` declared,
    and the buffer grows with the bytes that arrive (a declared size alone allocates nothing).

    Args:
        first: the first chunk.
        header: its decoded header.
        rest: the chunks after it.
        max_bytes: the largest payload accepted.
        on_chunk: called with the bytes received so far after each chunk (deadlines, progress).

    Raises:
        ProtocolError: a declared size over ``max_bytes``, or a stream that carries more or fewer
            bytes than it declared (truncated).
    """
    total = int(first.total_size)
    if total > max_bytes:
        raise ProtocolError(f"message declares {total} bytes, more than the limit of {max_bytes} "
                            "(raise --max-message-mb on the receiving side if this model is expected)")
    buf = bytearray()
    wire = first.ByteSize()
    for chunk in _chain(first, rest):
        n = len(chunk.data)
        if len(buf) + n > total:
            raise ProtocolError(f"stream carries more than the {total} bytes it declared")
        buf += chunk.data
        if chunk is not first:
            wire += chunk.ByteSize()
        if on_chunk is not None:
            on_chunk(len(buf))
    if len(buf) != total:
        raise ProtocolError(f"truncated stream: {len(buf)} of {total} declared bytes arrived")
    return Message(header, buf, wire, first.session)


def _chain(first: pb.Chunk, rest: Iterator[pb.Chunk]) -> Iterator[pb.Chunk]:
    yield first
    yield from rest
