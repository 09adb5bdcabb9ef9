"""The backup schedule and the [backup] settings, decided without a repository."""

from __future__ import annotations

import os

import pytest

from pgaurora.core.config import build
from pgaurora.core.errors import ConfigError
from pgaurora.operations.backups import due

NODES = [{"name": "n1", "host": "127.0.0.11"}]


def backup(kind: str, stop: float) -> dict:
    return {"type": kind, "timestamp": {"start": stop - 5, "stop": stop}}


@pytest.mark.parametrize(
    "backups, now, expected",
    [
        ([], 1000, "full"),  # nothing yet: a full one
        ([backup("full", 900)], 1000, None),  # the full one is recent
        ([backup("full", 900)], 1000 + 86400, "full"),  # a day later: a new full one
        ([backup("full", 900)], 900 + 3600, "incr"),  # an hour later: an incremental one
        ([backup("full", 900), backup("incr", 4500)], 4600, None),  # the incremental one is recent
        ([backup("full", 900), backup("incr", 4500)], 4500 + 3600, "incr"),
    ],
)
def test_the_schedule_takes_a_full_backup_daily_and_an_incremental_one_hourly(backups, now, expected):
    assert due(backups, now, full_every=86400, incr_every=3600) == expected


def test_without_a_schedule_nothing_is_due():
    assert due([], 10**9, None, None) is None


def test_a_passphrase_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "pass"
    path.write_text("secret\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as info:
        build({"nodes": NODES, "backup": {"cipher_pass_file": str(path)}})
    assert "readable by group or others (mode 644); chmod 600 it" in str(info.value)
    os.chmod(path, 0o600)
    assert build({"nodes": NODES, "backup": {"cipher_pass_file": str(path)}}).backup.passphrase() == "secret"


def test_the_passphrase_is_given_one_way_only_and_an_unset_variable_is_named(monkeypatch):
    monkeypatch.delenv("NO_SUCH_PASS", raising=False)
    with pytest.raises(ConfigError) as info:
        build(
            {
                "nodes": NODES,
                "backup": {"cipher_pass": "x", "cipher_pass_env": "NO_SUCH_PASS", "options": {"repo1-path": "/x"}},
            }
        )
    message = str(info.value)
    assert "give the passphrase one way only" in message and "NO_SUCH_PASS is not set" in message
    assert "'repo1-path' is not a repo1-* option" in message


def test_the_repository_options_reach_pgbackrest_and_its_config_file_is_private(tmp_path):
    pytest.importorskip("pgaurora.compose.backrest")
    from pgaurora.compose.backrest import BackRest, find_pgbackrest
    from pgaurora.compose.runas import server_user
    from pgaurora.core.errors import ClusterError

    try:
        find_pgbackrest()
    except ClusterError:
        pytest.skip("pgBackRest is installed by .ci/run")
    options = {"repo1-type": "s3", "repo1-s3-bucket": "backups", "repo1-s3-endpoint": "s3.example.net"}
    engine = BackRest(tmp_path, "demo", server_user(), passphrase="secret", options=options)
    engine.write_config()
    lines = engine.conf.read_text().splitlines()
    assert {
        "repo1-type=s3",
        "repo1-s3-bucket=backups",
        "repo1-s3-endpoint=s3.example.net",
        "repo1-cipher-type=aes-256-cbc",
        "repo1-cipher-pass=secret",
    } <= set(lines)
    assert engine.conf.stat().st_mode & 0o777 == 0o600
