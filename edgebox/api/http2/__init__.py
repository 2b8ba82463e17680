"""edgebox's HTTP/2 server connection for grpclib: h2's `H2Connection` interface, the server's part of it only."""

from edgebox.api.http2.connection import ServerConnection

__all__ = ["ServerConnection"]
