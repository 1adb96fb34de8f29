from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("protocol_version", "party_id", "num_examples")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    party_id: str
    num_examples: int
    def __init__(self, protocol_version: _Optional[int] = ..., party_id: _Optional[str] = ..., num_examples: _Optional[int] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("session", "run_config_json", "heartbeat_interval", "protocol_version")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    run_config_json: str
    heartbeat_interval: float
    protocol_version: int
    def __init__(self, session: _Optional[str] = ..., run_config_json: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("stop",)
    STOP_FIELD_NUMBER: _ClassVar[int]
    stop: bool
    def __init__(self, stop: _Optional[bool] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("session", "wait_seconds")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session: str
    wait_seconds: float
    def __init__(self, session: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("session", "header_json", "total_size", "data")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    session: str
    header_json: str
    total_size: int
    data: bytes
    def __init__(self, session: _Optional[str] = ..., header_json: _Optional[str] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PartyStatus(_message.Message):
    __slots__ = ("party_id", "alive", "seconds_since_heartbeat", "tasks_done", "peer")
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    party_id: str
    alive: bool
    seconds_since_heartbeat: float
    tasks_done: int
    peer: str
    def __init__(self, party_id: _Optional[str] = ..., alive: _Optional[bool] = ..., seconds_since_heartbeat: _Optional[float] = ..., tasks_done: _Optional[int] = ..., peer: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("round", "rounds", "phase", "parties", "last_accuracy", "rejected_messages", "bytes_in", "bytes_out", "protocol_version")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REJECTED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    round: int
    rounds: int
    phase: str
    parties: _containers.RepeatedCompositeFieldContainer[PartyStatus]
    last_accuracy: float
    rejected_messages: int
    bytes_in: int
    bytes_out: int
    protocol_version: int
    def __init__(self, round: _Optional[int] = ..., rounds: _Optional[int] = ..., phase: _Optional[str] = ..., parties: _Optional[_Iterable[_Union[PartyStatus, _Mapping]]] = ..., last_accuracy: _Optional[float] = ..., rejected_messages: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., protocol_version: _Optional[int] = ...) -> None: ...
