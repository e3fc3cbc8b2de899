import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SyncRequestView(_message.Message):
    __slots__ = ("destination_id", "updates", "request_id")
    DESTINATION_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    destination_id: str
    updates: _containers.RepeatedCompositeFieldContainer[ProfileUpdateView]
    request_id: str
    def __init__(self, destination_id: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[ProfileUpdateView, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ProfileUpdateView(_message.Message):
    __slots__ = ("profile_id", "event_time", "profile", "audiences", "update_id")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    event_time: _timestamp_pb2.Timestamp
    profile: bytes
    audiences: _containers.RepeatedScalarFieldContainer[bytes]
    update_id: str
    def __init__(self, profile_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., profile: _Optional[bytes] = ..., audiences: _Optional[_Iterable[bytes]] = ..., update_id: _Optional[str] = ...) -> None: ...
