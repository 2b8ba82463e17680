"""RequestBytesBudget: what a call holds, when it gives it back, and what the refusal says."""

from __future__ import annotations

import pytest

from edgebox.api.request_budget import RequestBufferFull, RequestBytesBudget
from edgebox.errors import ErrorCode


def test_messages_fit_until_the_limit_and_the_refusal_names_the_key_and_a_retry():
    budget = RequestBytesBudget(limit=100)
    first, second, third = object(), object(), object()
    budget.hold(first, 60)
    budget.hold(second, 40)
    with pytest.raises(RequestBufferFull) as refused:
        budget.hold(third, 1)
    assert refused.value.code == ErrorCode.RESOURCE_EXHAUSTED and refused.value.retry_after_s
    assert "grpc.max_buffered_request_bytes" in str(refused.value) and "100 bytes of requests" in str(refused.value)
    assert budget.in_use == 100  # the refused message holds nothing


def test_a_stream_gives_back_its_message_when_it_ends_or_reads_the_next():
    budget = RequestBytesBudget(limit=100)
    stream = object()
    budget.hold(stream, 70)
    budget.hold(stream, 80)  # a client stream's next message: the previous one is done with
    assert budget.in_use == 80
    budget.release(stream)
    budget.release(stream)  # ending twice (or a stream that never held) gives back nothing more
    assert budget.in_use == 0
    budget.hold(object(), 100)
