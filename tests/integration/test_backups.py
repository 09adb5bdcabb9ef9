"""Backups with a real pgBackRest: WAL archiving across a failover, encrypted repositories, exact PITR."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime

import psycopg
import pytest

from pgaurora.compose import LocalCluster
from pgaurora.compose.backrest import find_pgbackrest
from pgaurora.core.errors import ClusterError
from pgaurora.testing.background import WriteLoop
from tests.helpers import (
    PGAURORA,
    RowWriter,
    admin,
    cluster_dir,
    free_loopback_base,
    free_port,
    ids_on,
    service_config,
    wait_until,
)

try:
    find_pgbackrest()
except ClusterError:
    pytest.skip("pgBackRest is installed by .ci/run (Debian's pgbackrest)", allow_module_level=True)

MARKER = "PLAINTEXT-MARKER-7f3a9c"


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*PGAURORA, *args], capture_output=True, text=True, timeout=timeout)


def _secret(directory) -> str:
    path = directory / "cipher-pass"
    path.write_text("correct horse battery staple\n")
    os.chmod(path, 0o600)
    return str(path)


def _commits(svc, cluster) -> list[tuple[datetime, int]]:
    """Every row's commit time, as the writer recorded it (track_commit_timestamp)."""
    writer = cluster.node(svc.topology.writer)
    out = writer.sql("SELECT string_agg(id || '|' || pg_xact_commit_timestamp(xmin), ';' ORDER BY id) FROM marks")
    rows = [line.split("|") for line in out.split(";")]
    return sorted((datetime.fromisoformat(ts), int(i)) for i, ts in rows)


def _archived_up_to_now(svc, cluster) -> None:
    writer = cluster.node(svc.topology.writer)
    segment = writer.sql("SELECT pg_walfile_name(pg_switch_wal())")
    for _ in wait_until(f"{segment} to reach the repository", 30):
        if writer.sql("SELECT last_archived_wal FROM pg_stat_archiver") >= segment:
            break


def _restored_ids(new_dir) -> set[int]:
    restored = LocalCluster.open(new_dir)
    restored.start()
    try:
        return ids_on(restored.primary, "marks")
    finally:
        restored.destroy()


@pytest.mark.parametrize("failover", [False, True], ids=["same-timeline", "across-a-failover"])
def test_point_in_time_restore_brings_back_exactly_the_rows_committed_up_to_the_target(
    fresh_cluster, service, failover
):
    cluster = fresh_cluster(replicas=1)
    secret = _secret(cluster.root.parent)
    schedule = {} if failover else {"full_every": 3600}  # without a failover, the schedule takes the backup
    svc = service(service_config(cluster, backup={"cipher_pass_file": secret, **schedule}), cluster=cluster)
    writer = cluster.node(svc.topology.writer)
    writer.sql(f"CREATE TABLE marks (id int PRIMARY KEY, note text DEFAULT '{MARKER}')")
    if failover:
        made = _cli("backup", "--admin", svc.admin_url)
        assert made.returncode == 0 and "full backup" in made.stdout and "from n2" in made.stdout, made.stderr
    else:
        for _ in wait_until("a scheduled full backup", 30):
            if any(e["kind"] == "backup" and "(scheduled)" in e["reason"] for e in svc.service.events.recent()):
                break
    backed_up = time.time()
    rows = RowWriter.through(svc.writer, cluster.password)
    try:
        for _ in wait_until("the backup's last second over", 5):
            if time.time() > backed_up + 1.1:
                break
        rows.wait_for(40)
        if failover:  # the primary stops archiving, then dies: its last segments exist only on its standby
            writer.sql("ALTER SYSTEM SET archive_command = '/bin/false'")
            writer.sql("SELECT pg_reload_conf()")
            for _ in range(2):
                rows.wait_for(15)
                writer.sql("SELECT pg_switch_wal()")
            rows.wait_for(10)
            writer.kill()
            for _ in wait_until("a failover", 20):
                if svc.topology.writer not in (None, writer.name):
                    break
        rows.wait_for(40, timeout=60)  # after a failover the old primary is rewound in; a loaded machine is slow
    except AssertionError:
        print("events:", [(e["kind"], e["reason"][:160]) for e in svc.service.events.recent()][-15:])
        print("rows errors:", rows.errors[-5:])
        raise
    finally:
        rows.stop()
    commits = _commits(svc, cluster)
    (at_k, _), (at_next, _) = commits[-25], commits[-24]  # after the failover, when there was one
    target = at_k + (at_next - at_k) / 2
    expected = {i for ts, i in commits if ts <= target}
    cluster.node(svc.topology.writer).sql("DROP TABLE marks")  # the accident
    _archived_up_to_now(svc, cluster)
    if failover:
        for _ in wait_until("the old timeline's segments pushed from the new writer", 20):
            if any(e["kind"] == "archive_gap_closed" for e in svc.service.events.recent()):
                break
    new_dir = cluster_dir() / "restored"
    try:
        out = _cli(
            "restore",
            "--from",
            str(cluster.root),
            "--to",
            target.isoformat(sep=" "),
            "--dir",
            str(new_dir),
            "--base-address",
            free_loopback_base(1),
            "--port",
            str(free_port()),
            "--cipher-pass-file",
            secret,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        print(out.stdout)
        recovered = datetime.fromisoformat(out.stdout.split("recovered to")[1].split("(")[0].strip())
        assert recovered == max(ts for ts, _ in commits if ts <= target)  # the exact last commit replayed
        assert _restored_ids(new_dir) == expected  # no more and no fewer
        if not failover:
            _check_the_repository_is_encrypted(svc, cluster, target, cluster_dir() / "refused")
            _a_restore_to_the_range_end_has_every_archived_row(svc, cluster, secret, len(commits))
    finally:
        shutil.rmtree(new_dir.parent, ignore_errors=True)


def _a_restore_to_the_range_end_has_every_archived_row(svc, cluster, secret: str, rows: int) -> None:
    """The archive ends before any commit past the range's end, so recovery runs to the archive's end."""
    writer = cluster.node(svc.topology.writer)
    writer.sql(f"CREATE TABLE marks AS SELECT generate_series(1, {rows}) AS id")
    _archived_up_to_now(svc, cluster)
    end = json.loads(_cli("backups", "--json", "--admin", svc.admin_url).stdout)["restorable"]["to"]
    inside = datetime.fromtimestamp(end - 0.01).astimezone()
    new_dir = cluster_dir() / "restored"
    try:
        out = _cli(
            "restore",
            "--from",
            str(cluster.root),
            "--to",
            str(inside),
            "--dir",
            str(new_dir),
            "--base-address",
            free_loopback_base(1),
            "--port",
            str(free_port()),
            "--cipher-pass-file",
            secret,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert len(_restored_ids(new_dir)) == rows
    finally:
        shutil.rmtree(new_dir.parent, ignore_errors=True)


def _check_the_repository_is_encrypted(svc, cluster, target: datetime, new_dir) -> None:
    """No plaintext in the repository; a restore without the passphrase, or outside the range, is refused."""
    files = [p for p in (cluster.root / "backups").rglob("*") if p.is_file()]
    data = [p for p in files if "/backup/" in str(p) and "/pg_data/" in str(p)]
    plain = [str(p) for p in files if p.read_bytes()[:8] != b"Salted__"]  # aes-256-cbc, as openssl enc writes it
    assert data and not plain, plain[:5]
    archived = [p for p in files if "/archive/" in str(p) and p.stat().st_size > 1000]
    assert archived and not any(MARKER.encode() in p.read_bytes() for p in files)  # the rows' WAL is there too
    listing = _cli("backups", "--admin", svc.admin_url)
    assert listing.returncode == 0 and "encrypted" in listing.stdout and "restorable from" in listing.stdout
    try:
        out = _cli("restore", "--from", str(cluster.root), "--to", target.isoformat(sep=" "), "--dir", str(new_dir))
        assert out.returncode == 1 and "is encrypted" in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert not new_dir.exists()  # nothing half-made
        out = _cli(
            "restore",
            "--from",
            str(cluster.root),
            "--to",
            "2001-01-01 00:00:00+00",
            "--dir",
            str(new_dir),
            "--cipher-pass-file",
            _secret(cluster.root.parent),
        )
        assert out.returncode == 1 and "outside the restorable range: from 20" in out.stderr, out.stderr
    finally:
        shutil.rmtree(new_dir.parent, ignore_errors=True)


def test_archiving_failures_are_an_event_a_metric_and_a_status_line(fresh_cluster, service):
    cluster = fresh_cluster(replicas=1)
    svc = service(service_config(cluster, backup={}), cluster=cluster)
    writer = cluster.node(svc.topology.writer)
    writer.sql("ALTER SYSTEM SET archive_command = '/bin/false'")
    writer.sql("SELECT pg_reload_conf()")
    writer.sql("SELECT pg_switch_wal() FROM (SELECT txid_current()) AS t")
    for _ in wait_until("an archive_failed event", 30):
        if any(e["kind"] == "archive_failed" for e in svc.service.events.recent()):
            break
    metrics = admin(f"{svc.admin_url}/metrics")
    failures = next(m for m in metrics.splitlines() if m.startswith("pgaurora_archive_failures_total"))
    assert float(failures.split()[-1]) >= 1
    status = _cli("status", "--admin", svc.admin_url)
    assert "archive failing" in status.stdout, status.stdout


def _via(address: tuple[str, int], password: str, query: str):
    with psycopg.connect(
        host=address[0],
        port=address[1],
        user="postgres",
        password=password,
        dbname="postgres",
        connect_timeout=10,
        autocommit=True,
    ) as conn:
        return conn.execute(query).fetchone()


def test_backtrack_rewinds_behind_the_same_writer_endpoint_and_undo_moves_back(fresh_cluster, service):
    cluster = fresh_cluster(replicas=1)
    svc = service(service_config(cluster, backup={}), cluster=cluster)
    writer = cluster.node(svc.topology.writer)
    writer.sql("CREATE TABLE precious AS SELECT generate_series(1, 100) AS id")
    assert _cli("backup", "--admin", svc.admin_url).returncode == 0
    backed_up = time.time()
    writes = WriteLoop(svc.writer, "postgres", cluster.password, "numbers")
    try:
        for _ in wait_until("50 writes, and the backup's last second over", 10):
            if len(writes.acked) >= 50 and time.time() > backed_up + 1.1:
                break
        before = writer.sql("SELECT clock_timestamp()")
        writer.sql("SELECT pg_sleep(0.05)")
        writer.sql("DROP TABLE precious")  # the accident, under the write loop
        writes.wait_acked(len(writes.acked) + 50, 10)
        _archived_up_to_now(svc, cluster)
        epoch = svc.topology.epoch
        out = _cli("backtrack", "--to", before, "--yes", "--admin", svc.admin_url)
        assert out.returncode == 0, out.stdout + out.stderr
        print(out.stdout)
        assert _via(svc.writer, cluster.password, "SELECT count(*) FROM precious") == (100,)  # the same endpoint
        assert svc.topology.epoch == epoch + 1 and svc.topology.writer not in ("n1", "n2")
        assert sorted(n.name for n in svc.topology.nodes) == ["n3", "n4"]
        writes.wait_acked(len(writes.acked) + 20, 20)  # writes go on, into the rewound data
        undone = _cli("backtrack", "--undo", "--yes", "--admin", svc.admin_url)
        assert undone.returncode == 0, undone.stdout + undone.stderr
        print(undone.stdout)
        assert _via(svc.writer, cluster.password, "SELECT to_regclass('precious') IS NULL") == (True,)
        assert svc.topology.writer == "n1" and svc.topology.epoch == epoch + 2
        assert LocalCluster.open(cluster.root).parked == ["n3", "n4"]  # a later `up` leaves them stopped
        timelines = {n.name: n.timeline for n in svc.topology.nodes}
        assert timelines["n1"] == 3, timelines  # past the backtrack's 2: the line that runs is the newest
        writes.wait_acked(len(writes.acked) + 20, 20)  # n2 follows n1 onto its new timeline: commits go on
    finally:
        writes.stop()
    after_undo = cluster.node("n1").sql("SELECT clock_timestamp()")
    cluster.node("n1").sql("CREATE TABLE written_after_the_undo ()")  # recovery stops at a commit past the target
    _archived_up_to_now(svc, cluster)
    new_dir = cluster_dir() / "restored"
    try:  # a later point-in-time restore follows the line that runs, not the abandoned one
        later = _cli(
            "restore",
            "--from",
            str(cluster.root),
            "--to",
            after_undo,
            "--dir",
            str(new_dir),
            "--base-address",
            free_loopback_base(1),
            "--port",
            str(free_port()),
        )
        assert later.returncode == 0, later.stdout + later.stderr
        restored = LocalCluster.open(new_dir)
        restored.start()
        assert restored.primary.sql("SELECT to_regclass('precious') IS NULL") == "t"
        assert int(restored.primary.sql("SELECT max(id) FROM numbers")) >= max(writes.acked_ids()) - 1
        restored.destroy()
    finally:
        shutil.rmtree(new_dir.parent, ignore_errors=True)
    unavailable = [float(x.split("unavailable ")[1].split(" s")[0]) for x in (out.stdout, undone.stdout)]
    assert all(u < 10 for u in unavailable), unavailable
    again = _cli("backtrack", "--to", before, "--yes", "--admin", svc.admin_url)  # ends the first one's undo
    assert again.returncode == 0, again.stdout + again.stderr
    assert _via(svc.writer, cluster.password, "SELECT count(*) FROM precious") == (100,)
    assert any(e["kind"] == "backtrack_expired" for e in svc.service.events.recent())
    assert LocalCluster.open(cluster.root).parked == ["n1", "n2"] and not (cluster.root / "n5").exists()
    refused = _cli("backtrack", "--to", "2001-01-01 00:00:00+00", "--yes", "--admin", svc.admin_url)
    assert refused.returncode == 1 and "outside the restorable range" in refused.stderr


def test_backups_for_a_cluster_pgaurora_does_not_compose_are_refused_with_one_clear_message(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text('[[nodes]]\nname = "n1"\nhost = "127.0.0.1"\nport = 1\n[backup]\n')
    out = _cli("proxy", "-c", str(config), timeout=60)
    assert out.returncode == 1 and "backups work on clusters pgaurora composes" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_backtrack_and_its_undo_under_pgbench_through_the_pooled_writer_fail_no_transaction(
    fresh_cluster, service, tmp_path
):
    """Each swap holds writes, lets the pooled transactions in flight finish on the nodes leaving, stops them,
    and serves the new ones: the pooled clients wait and go on, none fails (issue 23)."""
    cluster = fresh_cluster(replicas=1)
    pool = {"pool_size": 8, "auth_user": "pgaurora_auth", "auth_password": cluster.auth_password}
    config = service_config(cluster, backup={}, writer={"pool_mode": "transaction"}, pool=pool)
    svc = service(config, cluster=cluster)
    env = {**os.environ, "PGPASSWORD": cluster.password, "PGUSER": "postgres"}
    primary = cluster.primary
    subprocess.run(["pgbench", "-i", "-q", "-h", primary.host, "-p", str(primary.port), "postgres"], check=True,
                   env=env, capture_output=True)  # fmt: skip
    assert _cli("backup", "--admin", svc.admin_url).returncode == 0
    backed_up = time.time()
    for _ in wait_until("the backup's last second to be over", 5):
        if time.time() > backed_up + 1.1:
            break
    moment = primary.sql("SELECT clock_timestamp()")
    primary.sql("CREATE TABLE after_the_moment ()")
    _archived_up_to_now(svc, cluster)
    host, port = svc.writer
    bench = subprocess.Popen(
        ["pgbench", "-n", "-c", "8", "-j", "2", "-T", "20", "-l", f"--log-prefix={tmp_path}/tx", "-h", host,
         "-p", str(port), "postgres"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        back = admin(f"{svc.admin_url}/backtrack", "POST", {"to": moment}, timeout=300)
        undone = admin(f"{svc.admin_url}/backtrack/undo", "POST", {}, timeout=300)
        assert bench.poll() is None, "the backtrack and its undo outlasted pgbench"
        out, err = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 0 and "aborted" not in err, err
    assert "number of failed transactions: 0" in out, out
    worst = max(int(line.split()[2]) for path in tmp_path.glob("tx.*") for line in path.read_text().splitlines())
    print(f"backtrack pause {back['unavailable_seconds']} s, undo {undone['unavailable_seconds']} s; "
          f"worst transaction {worst / 1e6:.2f} s")  # fmt: skip
    assert svc.topology.writer == "n1"
