"""Admin credentials: scopes, constant-time token checks, the local token file and where clients find it."""

from __future__ import annotations

import os
import stat

import pytest

from pgaurora.core import config as config_mod
from pgaurora.core.config import AdminScope
from pgaurora.core.errors import ConfigError
from pgaurora.service.admin import auth


def _config(tmp_path, **admin) -> config_mod.Config:
    return config_mod.build(
        {
            "cluster": "t",
            "state_dir": str(tmp_path),
            "admin": admin,
            "nodes": [{"name": "n1", "host": "127.0.0.1", "port": 5432}],
        }
    )


@pytest.mark.parametrize(
    "held, needed, allowed",
    [
        ("read", "read", True),
        ("read", "operate", False),
        ("operate", "operate", True),
        ("operate", "admin", False),
        ("admin", "read", True),
        ("admin", "admin", True),
    ],
)
def test_a_scope_includes_the_ones_below_it(held, needed, allowed):
    assert AdminScope(held).allows(AdminScope(needed)) is allowed


def test_only_a_known_bearer_token_identifies_its_credential():
    checker = auth.Authenticator({"ops": (AdminScope.OPERATE, "s3cret"), "ro": (AdminScope.READ, "other")})
    assert checker.identify("Bearer s3cret").name == "ops"
    assert checker.identify("bearer  other ").scope is AdminScope.READ
    for header in (None, "", "Bearer", "Bearer ", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "s3cret"):
        assert checker.identify(header) is None, header


def test_the_local_token_is_made_once_private_and_kept_across_restarts(tmp_path):
    config = _config(tmp_path)
    first = auth.local_token(config)
    path = tmp_path / "admin.token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_text().strip() == first
    assert auth.local_token(config) == first and len(first) >= 40


def test_a_client_takes_the_env_token_then_the_named_file_then_the_published_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PGAURORA_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("PGAURORA_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("PGAURORA_ADMIN_TOKEN_FILE", raising=False)
    assert auth.token_for("http://127.0.0.1:7001") is None
    published = auth.publish("127.0.0.1", 7001, "published")
    assert stat.S_IMODE(os.stat(published).st_mode) == 0o600
    assert auth.token_for("http://127.0.0.1:7001") == "published" and auth.token_for("http://127.0.0.1:7002") is None
    named = tmp_path / "named"
    named.write_text("from-file\n")
    monkeypatch.setenv("PGAURORA_ADMIN_TOKEN_FILE", str(named))
    assert auth.token_for("http://127.0.0.1:7001") == "from-file"
    monkeypatch.setenv("PGAURORA_ADMIN_TOKEN", "from-env")
    assert auth.token_for("http://127.0.0.1:7001") == "from-env"
    auth.withdraw(published, "someone else's")
    assert published.exists()
    auth.withdraw(published, "published")
    assert not published.exists()


def test_token_files_readable_by_others_and_repeated_names_are_refused_together(tmp_path):
    loose, good = tmp_path / "loose", tmp_path / "good"
    loose.write_text("x\n")
    good.write_text("y\n")
    os.chmod(loose, 0o644)
    os.chmod(good, 0o600)
    with pytest.raises(ConfigError) as info:
        _config(
            tmp_path,
            tokens=[
                {"name": "a", "scope": "read", "file": str(loose)},
                {"name": "b", "scope": "root", "file": str(good)},
            ],
        )
    text = str(info.value)
    assert "readable by group or others" in text and "scope" in text
    with pytest.raises(ConfigError, match="must be unique and not 'local'"):
        _config(tmp_path, tokens=[{"name": "local", "scope": "read", "file": str(good)}])


def test_a_verified_client_certificate_is_a_credential_by_its_common_name_only_when_mapped():
    checker = auth.Authenticator({}, {"ops-client": AdminScope.OPERATE})
    cert = {"subject": ((("organizationName", "x"),), (("commonName", "ops-client"),))}
    assert (checker.by_certificate(cert).name, checker.by_certificate(cert).scope) == (
        "cert:ops-client",
        AdminScope.OPERATE,
    )
    assert checker.by_certificate({"subject": ((("commonName", "other"),),)}) is None
    assert checker.by_certificate(None) is None and checker.by_certificate({}) is None


def test_https_on_the_admin_port_needs_a_certificate_and_client_certificates_need_their_ca(tmp_path):
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, tls=True, certificates=[{"common_name": "ops", "scope": "read"}])
    assert "certificates need client_ca_file" in str(info.value)
    with pytest.raises(ConfigError, match=r"admin\.tls: HTTPS on the admin port needs"):
        _config(tmp_path, tls=True)
