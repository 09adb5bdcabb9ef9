"""Config is validated at load and one ConfigError lists every problem."""

from __future__ import annotations

import pytest

from pgaurora.core.config import Fallback, LagLimit, build, load
from pgaurora.core.errors import ConfigError


def test_minimal_config_gets_documented_defaults():
    cfg = build({"nodes": [{"name": "n1", "host": "127.0.0.11"}]})
    assert (cfg.writer.port, cfg.reader.port, cfg.admin.port, cfg.dns.port) == (6432, 6433, 6434, 8053)
    assert cfg.monitor.probe_interval == 0.5 and cfg.monitor.failure_threshold == 3
    assert cfg.proxy.failover_connect_timeout == 30 and cfg.zone == "demo.pgaurora.internal"
    assert cfg.failover.sync_mode.value == "quorum" and cfg.dns.ttl == 1


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        build(
            {
                "nodes": [{"name": "N1", "host": "not a host"}, {"name": "n2", "host": "127.0.0.12", "port": 0}],
                "writer": {"port": 70000},
                "reader": {"policy": "random"},
                "bogus": 1,
                "monitor": {"max_replica_lag": "5 parsecs"},
            }
        )
    problems = info.value.problems
    assert len(problems) == 7, problems
    assert "nodes.0.name: String should match pattern '^[a-z][a-z0-9-]{0,62}$'" in problems
    assert "nodes.0.host: 'not a host' is not an IP address or host name" in problems
    assert "bogus: unknown setting" in problems
    assert any(p.startswith("reader.policy:") and "round_robin" in p for p in problems)
    assert (
        "monitor.max_replica_lag: unknown unit 'parsecs' in '5 parsecs' (use B, kB, MB, GB, ms, s or min)" in problems
    )
    assert str(info.value).startswith("invalid configuration (7 problems):")


def test_duplicate_names_and_addresses_are_rejected():
    with pytest.raises(ConfigError, match=r"duplicate node name 'n1'.*duplicate node address '127\.0\.0\.11:5432'"):
        build({"nodes": [{"name": "n1", "host": "127.0.0.11"}, {"name": "n1", "host": "127.0.0.11"}]})
    with pytest.raises(ConfigError, match=r"duplicate listen address '127\.0\.0\.1:7000'"):
        build({"nodes": [{"name": "n1", "host": "127.0.0.11"}], "writer": {"port": 7000}, "reader": {"port": 7000}})


def test_empty_node_list_is_one_clear_problem():
    with pytest.raises(ConfigError) as info:
        build({"nodes": []})
    assert info.value.problems == ["config: nodes: at least one node is required"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("16MB", LagLimit(bytes=16 * 1024**2)),
        ("512kB", LagLimit(bytes=512 * 1024)),
        (1000, LagLimit(bytes=1000)),
        ("5s", LagLimit(seconds=5.0)),
        ("250ms", LagLimit(seconds=0.25)),
        ("2min", LagLimit(seconds=120.0)),
    ],
)
def test_lag_limits_accept_sizes_and_times(text, expected):
    assert LagLimit.parse(text) == expected


def test_lag_limit_exceeded_by_either_measure():
    assert LagLimit(bytes=100).exceeded(101, None) and not LagLimit(bytes=100).exceeded(100, 999.0)
    assert LagLimit(seconds=1.0).exceeded(None, 1.5) and not LagLimit(seconds=1.0).exceeded(10**9, 0.5)


def test_load_reads_toml_and_reports_syntax_errors(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('cluster = "prod"\n[[nodes]]\nname = "a"\nhost = "127.0.0.21"\nport = 5433\n')
    assert load(good).nodes[0].port == 5433 and load(good).zone == "prod.pgaurora.internal"
    bad = tmp_path / "bad.toml"
    bad.write_text("[[nodes]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "missing.toml")


def test_every_setting_is_described_for_the_generated_reference():
    """docs/hooks/reference.py builds the configuration reference from these descriptions."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "hooks" / "reference.py"
    spec = importlib.util.spec_from_file_location("reference", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    text = reference.reference()  # raises on a setting without a description
    for key in ("witness_window", "max_data_loss", "failover_connect_timeout", "replication_host"):
        assert f"| `{key}` |" in text


def test_an_allow_list_entry_that_is_no_network_is_refused_at_load():
    with pytest.raises(ConfigError) as info:
        build(
            {
                "nodes": [{"name": "n1", "host": "127.0.0.1"}],
                "reader": {"allow": ["203.0.113.0/24", "127.0.0.1", "not-a-net"]},
            }
        )
    assert "reader.allow: 'not-a-net' is not an address or a network like 203.0.113.0/24" in str(info.value)


def test_the_reader_fallback_primary_is_the_older_spelling_of_writer():
    nodes = [{"name": "n1", "host": "127.0.0.11"}]
    assert build({"nodes": nodes, "reader": {"fallback": "primary"}}).reader.fallback is Fallback.WRITER
    assert build({"nodes": nodes}).reader.fallback is Fallback.WRITER
    with pytest.raises(ConfigError, match=r"reader\.fallback"):
        build({"nodes": nodes, "reader": {"fallback": "replica"}})


def test_a_pooled_endpoint_needs_a_source_of_secrets_and_may_reach_nodes_over_tls():
    nodes = [{"name": "n1", "host": "127.0.0.11"}]
    with pytest.raises(ConfigError) as missing:
        build({"nodes": nodes, "writer": {"pool_mode": "transaction"}})
    assert "set auth_user (with auth_password) for auth_query, or auth_file" in str(missing.value)
    tls = build(
        {
            "nodes": nodes,
            "reader": {"pool_mode": "session"},
            "pool": {"auth_user": "pgaurora_auth"},
            "tls": {"backend_tls": "require"},
        }
    )
    assert tls.tls.backend_tls.value == "require"
    pooled = build({"nodes": nodes, "writer": {"pool_mode": "transaction"}, "pool": {"auth_user": "a"}})
    assert pooled.pool.pool_size == 20


def test_token_keys_and_rules_are_checked_at_load_with_every_problem_named(tmp_path):
    loose, short = tmp_path / "loose.key", tmp_path / "short.key"
    loose.write_text("x" * 40)
    loose.chmod(0o644)
    short.write_text("x" * 10)
    short.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        build(
            {
                "nodes": [{"name": "n1", "host": "127.0.0.11"}],
                "tokens": {"keys": [{"id": "a", "file": str(loose)}, {"id": "b", "file": str(short)}]},
                "rules": [{"endpoints": ["nowhere"], "method": "scram"}, {"method": "token", "tls": "none"}],
            }
        )
    text = str(caught.value)
    assert "readable by group or others" in text and "holds fewer than 32 bytes" in text, text
    with pytest.raises(ConfigError) as rules:
        build(
            {
                "nodes": [{"name": "n1", "host": "127.0.0.11"}],
                "rules": [{"endpoints": ["nowhere"], "method": "scram"}, {"method": "token", "tls": "none"}],
            }
        )
    text = str(rules.value)
    assert "rules[1]: unknown endpoints nowhere" in text and "method 'token' needs [tokens] keys" in text, text
    assert "a token is only accepted over TLS, and this rule matches none" in text
