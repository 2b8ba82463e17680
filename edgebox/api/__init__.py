"""The gRPC face of the node: grpclib handlers, error mapping, message conversion and the server's lifecycle."""
