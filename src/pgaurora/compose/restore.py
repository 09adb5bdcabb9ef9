"""restore_cluster: a new cluster made from another's backups, recovered to a point in time."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..core.errors import ClusterError
from .backends import open_cluster
from .backrest import BackRest, recovered_to
from .local import LocalCluster

BLOCK = 16  # the restored cluster's nodes: the source's first address + 16 by default


@dataclass(frozen=True)
class Restored:
    cluster: LocalCluster
    recovered_to: str | None  # the time of the last transaction replayed
    seconds: float


def parse_time(text: str) -> datetime:
    """An ISO time with its zone ("2026-11-28 10:15:00+00"); ClusterError otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ClusterError(f"{text!r} is not a time like '2026-11-28 10:15:00+00'") from None
    if moment.tzinfo is None:
        raise ClusterError(f"{text!r} has no time zone: add one, e.g. '+00'")
    return moment


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(sep=" ", timespec="seconds")


def check_range(engine: BackRest, moment: datetime) -> None:
    """A restore reaches from the end of the oldest backup to the newest archived WAL; outside: refused."""
    backups = engine.backups()
    newest = engine.newest_archive_time()
    if not backups or newest is None:
        raise ClusterError(f"the repository {engine.repository} holds no backup to restore from")
    earliest = min(b["timestamp"]["stop"] for b in backups) + 1  # pgBackRest needs a backup that stopped
    # before the target's whole second
    if not earliest <= moment.timestamp() <= newest:
        raise ClusterError(
            f"{moment.isoformat(sep=' ')} is outside the restorable range: from {_stamp(earliest)} to {_stamp(newest)}"
        )


def restore_cluster(
    source_dir: Path,
    target: str,
    new_dir: Path,
    replicas: int = 0,
    base_address: str | None = None,
    port: int | None = None,
    repository: Path | None = None,
    passphrase: str | None = None,
) -> Restored:
    """Make a cluster in new_dir from source_dir's backups, recovered to target; its nodes are left stopped.
    Nothing stays behind when it fails."""
    started = time.monotonic()
    moment = parse_time(target)
    source = open_cluster(source_dir)
    base = base_address or str(ipaddress.ip_address(source.base_address) + BLOCK)
    new = LocalCluster(
        new_dir,
        name=source.name,
        replicas=replicas,
        base_address=base,
        port=port or source.port,
        password=source.password,
        replication_password=source.replication_password,
        synchronous=source.synchronous,
        tls=source.tls,
    )
    engine = BackRest(new.root, source.name, new.user, repository or source.root / "backups", passphrase)
    new.lock()
    try:
        new.create(primary_from=lambda node: _restore_into(engine, node, moment))
        recovered = recovered_to(new.primary.logfile.read_text(errors="replace"))
        new.stop()
    finally:
        new.unlock()
    return Restored(new, recovered, time.monotonic() - started)


def _restore_into(engine: BackRest, node, moment: datetime) -> None:
    engine.write_config(make_repository=False)
    if engine.passphrase is None and engine.repository_encrypted():
        raise ClusterError(
            f"the repository {engine.repository} is encrypted: give its passphrase "
            "(--cipher-pass-file, or the environment variable PGAURORA_CIPHER_PASS)"
        )
    check_range(engine, moment)
    engine.restore(node.datadir, moment.isoformat(sep=" "))
