"""Fixtures of the gRPC API tests: the asyncio thread that hosts the client."""

from tests.support.engine import aio  # noqa: F401
