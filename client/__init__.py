"""rasst client: gRPC stubs, sync and async clients, the hint merger and the reference translator.

Needs only grpcio, protobuf and numpy: a translation back-end installs ``rasst`` alone.
"""
