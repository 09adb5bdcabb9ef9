"""Which transactions a splitting endpoint sends to a replica: PostgreSQL's own parser decides (pglast)."""

from __future__ import annotations

import pytest

from pgaurora.proxy.split import Verdict, batch_verdict, verdict
from pgaurora.proxy.statements import setting_value
from pgaurora.wire.frontend import parse_message, simple_query

R, W, RO = Verdict.READ, Verdict.WRITE, Verdict.READ_ONLY


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", R),
        ("select count(*), max(at) from pairs where id = $1", R),
        ("SELECT lower(name) FROM t JOIN u USING (id) ORDER BY 1 LIMIT 5", R),
        ("WITH x AS (SELECT 1) SELECT * FROM x", R),
        ("VALUES (1), (2)", R),
        ("SELECT 1 UNION ALL SELECT 2", R),
        ("SELECT pg_is_in_recovery()", R),
        ("SELECT * FROM t FOR UPDATE", W),
        ("SELECT * FROM t FOR SHARE SKIP LOCKED", W),
        ("SELECT * INTO copy FROM t", W),
        ("WITH gone AS (DELETE FROM t RETURNING *) SELECT count(*) FROM gone", W),
        ("SELECT nextval('s')", W),
        ("SELECT my_function(1)", W),  # it may write: the parser cannot vouch for it
        ("SELECT set_config('a.b', 'c', false)", W),
        ("SELECT pg_advisory_lock(1)", W),
        ("SELECT 1; SELECT 2", W),  # several statements: one transaction, not proven
        ("INSERT INTO t VALUES (1)", W),
        ("SHOW search_path", W),
        ("BEGIN", W),
        ("BEGIN READ ONLY", RO),
        ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", RO),
        ("BEGIN READ WRITE", W),
        ("SELEC 1", W),  # the writer says what is wrong with it
    ],
)
def test_the_parser_decides_what_is_a_plain_read(sql, expected):
    assert verdict(sql.encode()) is expected


def _query(sql: str) -> tuple[bytes, bytes]:
    return (b"Q", simple_query(sql))


def test_an_extended_batch_is_a_read_only_when_every_statement_reads_and_it_is_complete():
    sync, execute = (b"S", b"S\x00\x00\x00\x04"), (b"E", b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00")
    read = (b"P", parse_message(b"", b"SELECT 1", b"\x00\x00"))
    write = (b"P", parse_message(b"", b"UPDATE t SET x = 1", b"\x00\x00"))
    assert batch_verdict([read, execute, sync], {}, False) is R
    assert batch_verdict([read, execute], {}, False) is W  # its Sync has not come: what follows may write
    assert batch_verdict([read, execute, write, execute, sync], {}, False) is W
    assert batch_verdict([_query("SELECT 1")], {}, False) is R
    begin = (b"P", parse_message(b"", b"BEGIN READ ONLY", b"\x00\x00"))
    commit = (b"P", parse_message(b"", b"COMMIT", b"\x00\x00"))
    assert batch_verdict([begin, execute, write, execute, sync], {}, False) is RO  # pgjdbc's setReadOnly(true)
    assert batch_verdict([begin, execute, read, execute, commit, execute, write, execute, sync], {}, False) is W
    assert batch_verdict([_query("INSERT INTO t VALUES (1)")], {}, True) is RO  # default_transaction_read_only


def test_a_carried_setting_gives_its_value_back():
    assert setting_value("SELECT set_config('pgaurora.consistency', 'global', false)") == "global"
    assert setting_value("SET pgaurora.consistency = 'session'") == "session"
    assert setting_value("set pgaurora.consistency to eventual;") == "eventual"
    assert setting_value("SET default_transaction_read_only = on") == "on"


def test_a_lone_begin_is_opened_here_and_set_transaction_read_only_decides():
    from pgaurora.proxy.split import declares_read_only, opens_transaction

    assert opens_transaction(b"BEGIN") and opens_transaction(b"START TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    assert not opens_transaction(b"BEGIN READ ONLY") and not opens_transaction(b"BEGIN; SELECT 1")
    assert not opens_transaction(b"COMMIT")
    assert declares_read_only(b"SET TRANSACTION READ ONLY")
    assert declares_read_only(b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE")
    assert declares_read_only(b"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    assert not declares_read_only(b"SET TRANSACTION READ WRITE")
    set_ro = _query("SET TRANSACTION READ ONLY")
    assert batch_verdict([set_ro], {}, False, opened=True) is RO
    assert batch_verdict([_query("SELECT 1")], {}, False, opened=True) is W  # in a transaction: not proven


class _Probing:
    """What PooledClient._probe reads and sets of its client: the replies held, and the writer's retry."""

    def __init__(self) -> None:
        self.probing: bytearray | None = bytearray()
        self.to_writer: str | None = None


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def test_a_read_refused_with_25006_is_dropped_even_when_its_error_comes_in_two_packets():
    from pgaurora.proxy.pooled import PooledClient

    error = _message(b"E", b"SERROR\0C25006\0Mcannot execute INSERT in a read-only transaction\0\0")
    described = _message(b"T", b"\0\0")
    client = _Probing()
    assert PooledClient._probe(client, described + error[:9]) == b""  # nothing decided yet: held
    assert client.probing == bytearray(described + error[:9])
    assert PooledClient._probe(client, error[9:] + _message(b"Z", b"I")) == b""
    assert (client.probing, client.to_writer) == (None, "retried_on_writer")


def test_a_read_that_returns_a_row_is_passed_on_whole():
    from pgaurora.proxy.pooled import PooledClient

    described, row = _message(b"T", b"\0\0"), _message(b"D", b"\0\0")
    client = _Probing()
    assert PooledClient._probe(client, described[:3]) == b""
    assert PooledClient._probe(client, described[3:] + row) == described + row
    assert (client.probing, client.to_writer) == (None, None)
    other = _message(b"E", b"SERROR\0C42P01\0Mno such table\0\0")
    client = _Probing()
    assert PooledClient._probe(client, other) == other  # another error: the client hears it
