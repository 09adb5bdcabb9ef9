"""[[rules]] matching (pg_hba's first match) and token signing and checking, as pure functions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from pgaurora.core.config import RuleConfig, TokenKey, TokensConfig
from pgaurora.proxy import rules
from pgaurora.proxy.scram import Secret, client_key_of
from pgaurora.proxy.tokens import TokenRefused, Tokens

RULES = (
    RuleConfig(users=("app",), tls="required", method="token"),
    RuleConfig(databases=("secret",), method="reject"),
    RuleConfig(endpoints=("reader",), addresses=("203.0.113.0/24",), method="scram"),
    RuleConfig(addresses=("127.0.0.1/32",), tls="none", method="scram"),
)


@pytest.mark.parametrize(
    ("endpoint", "database", "user", "address", "tls", "expected"),
    [
        ("writer", "db", "app", "127.0.0.1", True, (1, "token")),
        ("writer", "db", "app", "127.0.0.1", False, (4, "scram")),  # hostssl does not match plaintext
        ("writer", "secret", "bob", "127.0.0.1", False, (2, "reject")),
        ("reader", "db", "bob", "203.0.113.7", True, (3, "scram")),
        ("writer", "db", "bob", "203.0.113.7", True, None),  # rule 3 is for the reader alone
        ("writer", "db", "bob", "127.0.0.1", True, None),  # rule 4 is for plaintext alone
        ("writer", "db", "bob", "127.0.0.2", False, None),
        ("writer", "db", "bob", "", False, None),  # not an IP peer: only a rule for every address
    ],
)
def test_the_first_matching_rule_decides(endpoint, database, user, address, tls, expected):
    found = rules.match(RULES, endpoint, database, user, address, tls)
    assert ((found.number, found.method.value) if found else None) == expected


def test_without_rules_everyone_uses_scram_and_a_refusal_names_the_client():
    assert rules.match((), "writer", "db", "bob", "127.0.0.2", False) == rules.Match(0, rules.DEFAULT.method)
    text = rules.no_rule_message("writer", "db", "bob", "127.0.0.2", True)
    assert text == 'no pgaurora rule for host "127.0.0.2", user "bob", database "db", SSL encryption (writer)'


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _key(tmp_path, name: str) -> TokenKey:
    path = tmp_path / f"{name}.key"
    path.write_text(f"{name}-" * 16)
    path.chmod(0o600)
    return TokenKey(id=name, file=str(path))


def _with_claims(token: str, **claims: object) -> str:
    """The token with its claims rewritten and its signature kept: a tampered token."""
    head, body, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**decoded, **claims}).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


def test_a_token_is_checked_for_role_endpoint_expiry_signature_and_cluster(tmp_path):
    clock = Clock()
    tokens = Tokens(TokensConfig(keys=(_key(tmp_path, "a"),), max_ttl=600, default_ttl=60), "demo", clock)
    issued = tokens.issue("app", 30, ("writer",))
    assert tokens.verify(issued.token, "app", "writer")["sub"] == "app"
    for token, role, endpoint, reason in (
        (issued.token, "bob", "writer", "another role"),
        (issued.token, "app", "reader", "not for the reader endpoint"),
        (_with_claims(issued.token, sub="admin", ep=["writer"]), "admin", "writer", "signature"),
        ("garbage", "app", "writer", "not a pgaurora token"),
        (Tokens(tokens.config, "other", clock).issue("app").token, "app", "writer", "another cluster"),
    ):
        with pytest.raises(TokenRefused, match=reason):
            tokens.verify(token, role, endpoint)
    clock.now += 31
    with pytest.raises(TokenRefused, match="expired"):
        tokens.verify(issued.token, "app", "writer")
    with pytest.raises(TokenRefused, match="max_ttl"):
        tokens.issue("app", 601)


def test_a_key_removed_by_a_reload_verifies_until_max_ttl_and_the_new_key_signs(tmp_path):
    clock = Clock()
    old, new = _key(tmp_path, "old"), _key(tmp_path, "new")
    tokens = Tokens(TokensConfig(keys=(old,), max_ttl=600, default_ttl=60), "demo", clock)
    before = tokens.issue("app", 600).token
    tokens.reload(TokensConfig(keys=(new,), max_ttl=600, default_ttl=60))
    assert tokens.issue("app").key_id == "new"
    clock.now += 599
    assert tokens.verify(before, "app", "writer")["sub"] == "app"
    clock.now += 2
    with pytest.raises(TokenRefused, match="does not hold"):
        tokens.verify(before, "app", "writer")


def test_a_password_gives_the_client_key_of_its_secret_and_another_gives_none():
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    secret = Secret(4096, b"salt", hashlib.sha256(client_key).digest(), b"")
    assert client_key_of("pw", secret) == client_key
    assert client_key_of("other", secret) is None
