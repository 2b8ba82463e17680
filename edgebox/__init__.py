"""edgebox: an edge video-analytics engine driven over gRPC."""

__version__ = "0.1.0"
