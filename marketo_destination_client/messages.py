"""The API's messages and enums (generated from proto/marketo_destination/v1/destination.proto),
re-exported: ``from marketo_destination_client import pb`` then ``pb.ProfileUpdate(...)``."""

from service._proto.marketo_destination.v1 import destination_pb2 as pb
from service._proto.marketo_destination.v1 import destination_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
