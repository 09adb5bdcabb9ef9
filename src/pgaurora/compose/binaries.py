"""Find the PostgreSQL server binaries: PATH, pg_config --bindir, or /usr/lib/postgresql/<v>/bin."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from ..core.errors import ClusterError

REQUIRED = ("initdb", "pg_ctl", "postgres", "pg_basebackup", "psql", "pg_rewind", "pg_controldata")


def _has_all(bindir: str) -> bool:
    return all(os.access(os.path.join(bindir, b), os.X_OK) for b in REQUIRED)


def _candidates() -> list[str]:
    found = []
    initdb = shutil.which("initdb")
    if initdb:
        found.append(os.path.dirname(os.path.realpath(initdb)))
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            found.append(out.stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    found += sorted(versions, key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True)
    return found


def find_bindir(explicit: str | None = None) -> str:
    """The directory holding initdb, pg_ctl, postgres, pg_basebackup, psql and pg_rewind."""
    candidates = [explicit] if explicit else _candidates()
    for bindir in candidates:
        if bindir and _has_all(bindir):
            return bindir
    raise ClusterError(
        "PostgreSQL server binaries not found (looked for initdb, pg_ctl, postgres, pg_basebackup, pg_controldata, "
        f"psql and pg_rewind in {candidates or 'PATH, pg_config --bindir and /usr/lib/postgresql/*/bin'}); "
        "install them, e.g. `apt-get install postgresql`"
    )
