"""The gRPC edge: server, servicer, protobuf conversion, interceptors, callers and TLS.

The only importer of service._proto.
"""
