"""Pooling's pure parts: SCRAM at the proxy, the frontend messages it rewrites, and what a statement does to a
transaction-pooled session."""

from __future__ import annotations

import base64

import pytest
from scramp import ScramClient, ScramMechanism

from pgaurora.proxy.pooled import startup_settings
from pgaurora.proxy.scram import ClientExchange, ScramFailed, Secret, ServerExchange
from pgaurora.proxy.statements import NOTHING, Pin, effect
from pgaurora.wire import RemoteProtocolError, StartupMessage
from pgaurora.wire.frontend import (
    bind_message,
    bind_statement,
    bound_name,
    parse_message,
    parse_parts,
    read_sasl_initial,
    rebound,
    sasl_initial_response,
)


def _secret(password: str) -> Secret:
    salt, stored, server, iterations = ScramMechanism("SCRAM-SHA-256").make_auth_info(password, iteration_count=4096)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    parsed = Secret.parse(f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}")
    assert parsed is not None
    return parsed


def _login(secret: Secret, password: str) -> ServerExchange:
    """scramp as an independent client (it needs a username; PostgreSQL's clients send an empty one)."""
    client, server = ScramClient(["SCRAM-SHA-256"], "ignored", password), ServerExchange(secret)
    client.set_server_first(server.first(client.get_client_first()))
    client.set_server_final(server.final(client.get_client_final()))  # scramp checks the server's proof
    return server


def test_a_right_password_recovers_the_client_key_that_logs_in_to_a_node_holding_the_same_secret():
    secret = _secret("pw")
    proxy = _login(secret, "pw")
    assert proxy.client_key is not None
    node, as_client = ServerExchange(secret), ClientExchange(proxy.client_key, secret)
    server_final = node.final(as_client.final(node.first(as_client.first())))
    as_client.verify(server_final)  # raises unless the node proved it knows the secret


@pytest.mark.parametrize("secret", [_secret("pw"), Secret.mock("nobody", b"seed")])
def test_a_wrong_password_and_a_made_up_secret_fail_the_same_way(secret):
    with pytest.raises(ScramFailed, match="wrong password"):
        _login(secret, "not-it")


def test_a_node_whose_salt_changed_is_refused_before_any_proof_is_sent():
    secret = _secret("pw")
    key = _login(secret, "pw").client_key
    assert key is not None
    node = ServerExchange(_secret("pw"))  # same password, another salt: the password was set again
    as_client = ClientExchange(key, secret)
    with pytest.raises(ScramFailed, match="salt differs"):
        as_client.final(node.first(as_client.first()))


@pytest.mark.parametrize("text", ["md5abc", "plain", "SCRAM-SHA-256$x:y$z", ""])
def test_anything_but_a_scram_secret_is_not_a_secret(text):
    assert Secret.parse(text) is None


def test_channel_binding_is_refused_at_the_proxy():
    with pytest.raises(ScramFailed):
        ServerExchange(_secret("pw")).first("p=tls-server-end-point,,n=,r=abc")


@pytest.mark.parametrize(
    ("sql", "pins", "settings", "reset_all"),
    [
        (b"SELECT 1", (), (), False),
        (b"UPDATE t SET a = 1", (), (), False),
        (b"SET search_path = a, b", (), (("search_path", "SET search_path = a, b"),), False),
        (b"BEGIN; SET statement_timeout = 5; COMMIT", (), (("statement_timeout", "SET statement_timeout = 5"),), False),
        (b"SET LOCAL work_mem = '64MB'", (), (), False),
        (b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", (), (), False),
        (b"RESET search_path", (), (("search_path", None),), False),
        (b"RESET ALL", (), (), True),
        (b"SELECT pg_advisory_lock(1)", (Pin.ADVISORY_LOCK,), (), False),
        (b"SELECT pg_advisory_xact_lock(1)", (), (), False),
        (b"CREATE TEMP TABLE t (a int)", (Pin.TEMP_TABLE,), (), False),
        (b"CREATE TABLE template_x (a int)", (), (), False),
        (b"SELECT 1 INTO TEMPORARY t", (Pin.TEMP_TABLE,), (), False),
        (b"LISTEN jobs", (Pin.LISTEN,), (), False),
        (b"PREPARE p AS SELECT 1", (Pin.SQL_PREPARE,), (), False),
        (b"DECLARE c CURSOR WITH HOLD FOR SELECT 1", (Pin.WITH_HOLD_CURSOR,), (), False),
        (b"DECLARE c CURSOR FOR SELECT 1", (), (), False),
        (b"SELECT set_config('role', 'x', false)", (Pin.SET_CONFIG,), (), False),
        (b"SET ROLE reader", (), (("role", "SET ROLE reader"),), False),
        (b"SET search_path = (", (), (), False),  # a syntax error: the server says so, nothing is carried
    ],
)
def test_what_a_statement_does_to_a_pooled_session(sql, pins, settings, reset_all):
    found = effect(sql)
    assert (found.pins, found.settings, found.reset_all) == (pins, settings, reset_all)


def test_the_common_statement_never_reaches_the_parser():
    assert effect(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1") is NOTHING


def test_statement_names_are_rewritten_and_the_rest_kept_byte_for_byte():
    parse = parse_message(b"s1", b"SELECT $1", b"\x00\x01\x00\x00\x00\x17")
    assert parse_parts(parse[5:]) == (b"s1", b"SELECT $1", b"\x00\x01\x00\x00\x00\x17")
    bind = bind_message(b"", b"s1", b"\x00\x00\x00\x00\x00\x00")
    portal, name, rest = bind_statement(bind[5:])
    assert name == b"s1"
    renamed = bind_message(portal, b"pga_x", rest)
    assert int.from_bytes(renamed[1:5], "big") == len(renamed) - 1
    assert bind_statement(renamed[5:]) == (b"", b"pga_x", b"\x00\x00\x00\x00\x00\x00")


@pytest.mark.parametrize("portal", [b"", b"portal_7"])
@pytest.mark.parametrize("name", [b"", b"s1", b"a_much_longer_statement_name"])
def test_a_bind_is_renamed_in_place_byte_for_byte(portal, name):
    rest = b"\x00\x01\x00\x01\x00\x01\x00\x00\x00\x02\x34\x32\x00\x00"
    bind = bind_message(portal, name, rest)
    start, end = bound_name(bind)
    assert bind[start:end] == name
    renamed = rebound(bind, start, end, b"pga_0123456789abcdef")
    assert renamed == bind_message(portal, b"pga_0123456789abcdef", rest)


@pytest.mark.parametrize("broken", [b"B\x00\x00\x00\x04", b"B\x00\x00\x00\x06p\x00", b"B\x00\x00\x00\x06pq"])
def test_a_bind_without_its_two_strings_is_a_protocol_violation(broken):
    with pytest.raises(RemoteProtocolError):
        bound_name(broken)


def test_a_sasl_initial_response_reads_back():
    message = sasl_initial_response("SCRAM-SHA-256", "n,,n=,r=abc")
    assert read_sasl_initial(message[5:]) == ("SCRAM-SHA-256", "n,,n=,r=abc")


def test_startup_options_become_settings_to_carry():
    startup = StartupMessage(
        (("user", "u"), ("database", "d"), ("application_name", "app"), ("options", "-c search_path=s --work-mem=4MB"))
    )
    assert startup_settings(startup) == {"application_name": "app", "search_path": "s", "work_mem": "4MB"}
