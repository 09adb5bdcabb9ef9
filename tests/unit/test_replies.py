"""ServerStream: the server's replies read by their headers only, in whatever chunks they arrive."""

from __future__ import annotations

import pytest

from pgaurora.proxy.replies import PASS, SWALLOW, SYNC, ServerStream


def _msg(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + (len(payload) + 4).to_bytes(4, "big") + payload


ROW = _msg(b"D", b"\x00\x01\x00\x00\x00\x03abc")
SELECT = _msg(b"T", b"\x00\x00") + ROW + _msg(b"C", b"SELECT 1\x00") + _msg(b"Z", b"I")
PARSED, CLOSED, BOUND = _msg(b"1"), _msg(b"3"), _msg(b"2")


def _stream(replies=(), hidden=0, expected=1) -> tuple[ServerStream, list]:
    seen: list = []
    stream = ServerStream(lambda status, rolled_back: seen.append((status, rolled_back)))
    stream.replies.extend(replies)
    stream.hidden, stream.expected = hidden, expected
    return stream, seen


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 6, 7, 64, 10_000])
def test_replies_in_any_chunks_are_relayed_whole_and_the_end_of_the_transaction_is_seen(size):
    stream, seen = _stream(replies=[SYNC])
    out = b"".join(stream.relay(chunk) for chunk in _chunks(SELECT, size))
    assert out == SELECT
    assert seen == [(b"I", False)] and stream.expected == 0 and not stream.replies


@pytest.mark.parametrize("size", [1, 4, 5, 9, 10_000])
def test_replies_to_injected_messages_are_cut_and_the_clients_own_relayed(size):
    # injected Close (cut), the client's Parse (relayed), an injected Parse (cut), the client's Bind...
    data = CLOSED + PARSED + PARSED + BOUND + SELECT
    stream, _ = _stream(replies=[SWALLOW, PASS, SWALLOW, SYNC])
    out = b"".join(stream.relay(chunk) for chunk in _chunks(data, size))
    assert out == PARSED + BOUND + SELECT


@pytest.mark.parametrize("size", [1, 3, 6, 11, 10_000])
def test_the_replies_to_pgauroras_own_query_are_cut_up_to_its_ready_for_query(size):
    restore = _msg(b"C", b"RESET\x00") + _msg(b"S", b"application_name\x00app\x00") + ROW * 50 + _msg(b"Z", b"I")
    stream, seen = _stream(replies=[SYNC], hidden=1)
    out = b"".join(stream.relay(chunk) for chunk in _chunks(restore + SELECT, size))
    assert out == SELECT and stream.hidden == 0 and seen == [(b"I", False)]


def test_a_rollback_is_reported_with_the_ready_for_query_that_follows_it():
    stream, seen = _stream(replies=[SYNC, SYNC], expected=2)
    stream.relay(_msg(b"C", b"SET\x00") + _msg(b"Z", b"T") + _msg(b"C", b"ROLLBACK\x00") + _msg(b"Z", b"I"))
    assert seen == [(b"T", False), (b"I", True)] and stream.status == b"I" and stream.expected == 0


def test_after_an_error_the_replies_owed_until_the_sync_are_dropped_with_it():
    stream, _ = _stream(replies=[PASS, SWALLOW, SYNC, PASS, SYNC], expected=2)
    error = _msg(b"E", b"SERROR\x00C42601\x00Msyntax\x00\x00")
    assert stream.relay(error + _msg(b"Z", b"I") + PARSED) == error + _msg(b"Z", b"I") + PARSED
    assert list(stream.replies) == [SYNC]


def test_a_large_row_split_over_many_chunks_is_relayed_without_being_held():
    big = _msg(b"D", b"\x00\x01" + (100_000).to_bytes(4, "big") + b"x" * 100_000)
    stream, _ = _stream(replies=[SYNC])
    first = stream.relay(big[:70_000])
    assert first == big[:70_000]  # relayed as it came, not buffered until whole
    assert stream.relay(big[70_000:] + _msg(b"Z", b"I")) == big[70_000:] + _msg(b"Z", b"I")


def test_a_fatal_error_is_cut_and_kept_for_the_client_to_hear_what_was_lost():
    stream, _ = _stream(replies=[SYNC])
    why = b"Mterminating connection due to unexpected postmaster exit\x00"
    fatal = _msg(b"E", b"SFATAL\x00VFATAL\x00C57P01\x00" + why + b"\x00")
    plain = _msg(b"E", b"SERROR\x00VERROR\x00C22012\x00Mdivision by zero\x00\x00")
    assert stream.relay(plain + fatal) == plain
    assert stream.fatal == "terminating connection due to unexpected postmaster exit"
