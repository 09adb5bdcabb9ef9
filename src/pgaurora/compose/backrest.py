"""BackRest: pgBackRest for a composed cluster: its config file, archive-push, backups, info and restore."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Protocol

from ..core.errors import ClusterError
from .runas import OsUser


class BackedNode(Protocol):
    """What pgBackRest needs to know of a node: where its data and socket are, and its port."""

    datadir: Path
    sockdir: Path
    port: int


BACKREST_DIR = "backrest"
SEGMENT = re.compile(r"^([0-9A-F]{8})[0-9A-F]{16}$")


def find_pgbackrest() -> str:
    path = shutil.which("pgbackrest") or shutil.which("pgbackrest", path="/usr/bin:/usr/local/bin")
    if path is None:
        raise ClusterError("pgBackRest is not installed: on Debian, apt-get install pgbackrest")
    return path


class BackRest:
    """One stanza (the cluster's name) in one repository. Every command runs as the server's OS user, and
    names the nodes it needs on its command line: the writer changes, the config file does not."""

    def __init__(
        self,
        root: Path,
        stanza: str,
        user: OsUser,
        repository: Path | None = None,
        passphrase: str | None = None,
        retention_full: int = 2,
        options: dict | None = None,
    ) -> None:
        self.dir = root / BACKREST_DIR
        self.conf = self.dir / "pgbackrest.conf"
        self.repository = repository or root / "backups"
        self.stanza, self.user, self.passphrase = stanza, user, passphrase
        self.retention_full, self.options = retention_full, dict(options or {})
        self.binary = find_pgbackrest()

    @property
    def encrypted(self) -> bool:
        return self.passphrase is not None

    def write_config(self, make_repository: bool = True) -> None:
        """pgbackrest.conf, 0600 and owned by the server's user (it holds the passphrase)."""
        if not make_repository and not self.repository.is_dir():
            raise ClusterError(f"no repository at {self.repository}")
        for path in (self.dir, self.dir / "log", self.dir / "lock", self.dir / "spool", self.repository):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.user.chown(str(path))
        lines = [
            "[global]",
            f"repo1-path={self.repository}",
            f"repo1-retention-full={self.retention_full}",
            f"log-path={self.dir / 'log'}",
            f"lock-path={self.dir / 'lock'}",
            f"spool-path={self.dir / 'spool'}",
            "start-fast=y",
            "log-level-console=warn",
            "log-level-file=info",
            "compress-type=lz4",
        ]
        if self.passphrase is not None:
            lines += ["repo1-cipher-type=aes-256-cbc", f"repo1-cipher-pass={self.passphrase}"]
        lines += [f"{k}={v}" for k, v in self.options.items()]
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.user.chown(str(self.conf))

    def archive_command(self, node: BackedNode) -> str:
        return f"{self.binary} --config={self.conf} --stanza={self.stanza} --pg1-path={node.datadir} archive-push %p"

    def restore_command(self, node: BackedNode) -> str:
        return (
            f'{self.binary} --config={self.conf} --stanza={self.stanza} --pg1-path={node.datadir} archive-get %f "%p"'
        )

    def run(self, *args: str, timeout: float = 3600, check: bool = True):
        return self.user.run(
            [self.binary, f"--config={self.conf}", f"--stanza={self.stanza}", *args], timeout=timeout, check=check
        )

    @staticmethod
    def _pg(index: int, node: BackedNode) -> list[str]:
        return [
            f"--pg{index}-path={node.datadir}",
            f"--pg{index}-socket-path={node.sockdir}",
            f"--pg{index}-port={node.port}",
        ]

    def stanza_create(self, writer: BackedNode) -> None:
        """Make the stanza (once; again is a no-op when it matches the cluster)."""
        self.run("stanza-create", *self._pg(1, writer), timeout=120)

    def backup(self, kind: str, writer: BackedNode, standby: BackedNode | None) -> str:
        """A backup (full, diff or incr), copied from the standby when one is given; its label."""
        before = {b["label"] for b in self.backups()}
        extra = [*self._pg(2, standby), "--backup-standby"] if standby is not None else []
        self.run("backup", f"--type={kind}", *self._pg(1, writer), *extra)
        made = [b for b in self.backups() if b["label"] not in before]
        if not made:
            raise ClusterError("pgbackrest backup finished but no new backup is in the repository")
        return made[-1]["label"]

    def info(self) -> dict:
        """The stanza as `pgbackrest info --output=json` shows it ({} before the stanza exists)."""
        out = self.run("info", "--output=json", timeout=120)
        stanzas = json.loads(out.stdout or "[]", strict=False)
        stanza = stanzas[0] if stanzas else {}
        status = stanza.get("status", {})
        if status.get("code") not in (None, 0, 1, 2, 6):  # ok; no stanza, or no backup, yet; a backup running
            message = "".join(c for c in status.get("message", "") if c.isprintable())
            raise ClusterError(
                f"cannot read the repository {self.repository}: {message}"
                + (" (is the passphrase right?)" if self.encrypted else "")
            )
        return stanza

    def repository_encrypted(self) -> bool:
        """Does the repository need a passphrase? (pgBackRest's info files are plain INI text otherwise.)"""
        info = self.repository / "backup" / self.stanza / "backup.info"
        return info.is_file() and not info.read_bytes().startswith(b"[backrest]")

    def backups(self) -> list[dict]:
        return self.info().get("backup", [])

    def newest_archive_time(self) -> float | None:
        """When the newest WAL file reached the repository (its file's time): the end of the restorable range."""
        archive = self.repository / "archive" / self.stanza
        times = [p.stat().st_mtime for p in archive.rglob("*") if p.is_file() and SEGMENT.match(p.name[:24])]
        return max(times, default=None)

    def push_timeline(self, node: BackedNode, timeline: int) -> list[str]:
        """archive-push every complete WAL segment of `timeline` still in node's pg_wal (those already in the
        repository are recognised by their checksum and skipped). Closes the gap an old primary leaves when
        it dies before archiving segments its standbys received. The segments pushed."""
        prefix = f"{timeline:08X}"
        names = sorted(
            p.name for p in (node.datadir / "pg_wal").iterdir() if SEGMENT.match(p.name) and p.name.startswith(prefix)
        )
        for name in names:
            self.user.run(
                [
                    self.binary,
                    f"--config={self.conf}",
                    f"--stanza={self.stanza}",
                    f"--pg1-path={node.datadir}",
                    "archive-push",
                    str(node.datadir / "pg_wal" / name),
                ],
                timeout=300,
            )
        return names

    def restore(self, datadir: Path, target_time: str) -> None:
        """Restore the newest backup before target_time into datadir, set to recover up to it and promote."""
        self.run(
            "restore",
            f"--pg1-path={datadir}",
            "--type=time",
            f"--target={target_time}",
            "--target-action=promote",
            "--target-timeline=latest",
            timeout=24 * 3600,
        )


def recovered_to(log: str) -> str | None:
    """The time of the last transaction a point-in-time recovery replayed, from the server's log."""
    found = re.findall(r"last completed transaction was at log time (.+)$", log, re.M)
    return found[-1].strip() if found else None
