"""Run PostgreSQL's programs as an unprivileged OS user when pgaurora itself runs as root."""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from typing import Any

from ..core.errors import ClusterError

CANDIDATE_USERS = ("postgres", "pgaurora")


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()

    def run(
        self,
        argv: list[str],
        *,
        env: dict | None = None,
        check: bool = True,
        timeout: float = 120,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess:
        kwargs: dict[str, Any] = {} if self.is_self else {"user": self.uid, "group": self.gid, "extra_groups": []}
        full_env = {**os.environ, "HOME": cwd or "/", **(env or {})}
        try:
            result = subprocess.run(
                argv,
                env=full_env,
                capture_output=True,
                text=True,
                errors="replace",
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                cwd=cwd or "/",
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{os.path.basename(argv[0])} did not finish within {timeout:.0f} s") from None
        if check and result.returncode != 0:
            raise ClusterError(
                f"{os.path.basename(argv[0])} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result

    def chown(self, path: str) -> None:
        if not self.is_self:
            os.chown(path, self.uid, self.gid)


def server_user() -> OsUser:
    """Ourselves, or (as root, since initdb refuses root) an unprivileged user, created if needed."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return OsUser(me.pw_name, me.pw_uid, me.pw_gid)
    for name in CANDIDATE_USERS:
        try:
            entry = pwd.getpwnam(name)
            return OsUser(name, entry.pw_uid, entry.pw_gid)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgaurora"],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam("pgaurora")
    return OsUser("pgaurora", entry.pw_uid, entry.pw_gid)
