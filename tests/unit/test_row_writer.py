"""The tests' row-writing workload survives an INSERT that committed but whose acknowledgement was lost."""

from __future__ import annotations

import threading

import psycopg
import psycopg.errors

from tests.helpers import RowWriter


class LostAckDatabase:
    """A table with a primary key, in memory; the INSERT of `lose` commits, then its connection dies."""

    def __init__(self, lose: int) -> None:
        self.rows: set[int] = set()
        self.lose, self.lock = lose, threading.Lock()

    def connect(self) -> LostAckDatabase.Connection:
        return self.Connection(self)

    class Connection:
        def __init__(self, db: LostAckDatabase) -> None:
            self.db = db

        def execute(self, query: str, params: tuple[int]) -> None:
            (row,) = params
            with self.db.lock:
                if row in self.db.rows:
                    raise psycopg.errors.UniqueViolation(f"Key (id)=({row}) already exists.")
                self.db.rows.add(row)
            if row == self.db.lose:
                raise psycopg.OperationalError("server closed the connection unexpectedly")

        def close(self) -> None:
            pass


def test_an_insert_whose_ack_was_lost_is_not_retried_under_the_same_id():
    db = LostAckDatabase(lose=1003)
    writer = RowWriter(db.connect, pace=0)
    try:
        writer.wait_for(20, timeout=10)
    finally:
        writer.stop()
    assert writer.unknown == [1003]
    assert not any("UniqueViolation" in e for e in writer.errors), writer.errors
    assert set(writer.inserted) | {1003} == db.rows  # every acknowledged id committed, and only 1003 is in doubt
    assert 1003 not in writer.inserted


def test_a_failed_connect_uses_no_id():
    attempts = iter([psycopg.OperationalError("connection refused")])
    db = LostAckDatabase(lose=-1)

    def connect():
        failure = next(attempts, None)
        if failure is not None:
            raise failure
        return db.connect()

    writer = RowWriter(connect, pace=0)
    try:
        writer.wait_for(3, timeout=10)
    finally:
        writer.stop()
    assert writer.unknown == [] and writer.inserted[:3] == [1000, 1001, 1002]
