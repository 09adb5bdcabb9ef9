"""A PostgreSQL image built from this machine's own binaries, for clusters of containers (no registry needed).

The image holds the server's bin and share directories, every shared library that `ldd` names for
them (with the loader), /bin/sh, a passwd and group with the same postgres user as the host (so bind-
mounted data directories keep their owner), and /tmp. It is imported through the Docker API in about
5 seconds, and reused while an image of that name exists.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

from ..core.errors import ClusterError
from .binaries import find_bindir
from .runas import OsUser, server_user

DEFAULT_IMAGE = "pgaurora/postgres:local"
IMAGE_ENV = "PGAURORA_PG_IMAGE"
_LIB = re.compile(r"(/\S+\.so[^\s]*)")


def image_name() -> str:
    return os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)


def _libraries(paths: list[Path]) -> set[str]:
    found = set()
    for path in paths:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
        found.update(_LIB.findall(out.stdout))
    return found


def _contents(bindir: str) -> list[str]:
    """Everything the image needs: the server's directories, their libraries, a shell, time zones."""
    pg_root = Path(bindir).parent  # /usr/lib/postgresql/15
    version = pg_root.name
    share = Path("/usr/share/postgresql") / version
    binaries = [p for p in Path(bindir).iterdir() if p.is_file()]
    libs = [p for p in (pg_root / "lib").rglob("*.so")] if (pg_root / "lib").exists() else []
    paths = [str(pg_root), str(share), "/bin/sh", "/usr/share/zoneinfo/UTC", "/usr/share/zoneinfo/Etc/UTC"]
    paths += sorted(_libraries(binaries + libs + [Path("/bin/sh")]))
    return [p for p in paths if os.path.exists(p)]


def _etc(user: OsUser) -> dict[str, bytes]:
    return {
        "etc/passwd": f"root:x:0:0::/root:/bin/sh\n{user.name}:x:{user.uid}:{user.gid}::/tmp:/bin/sh\n".encode(),
        "etc/group": f"root:x:0:\n{user.name}:x:{user.gid}:\n".encode(),
    }


def image_exists(client, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(client, name: str | None = None, force: bool = False) -> str:
    """The image's name, importing it first unless it exists (or force)."""
    name = name or image_name()
    if not force and image_exists(client, name):
        return name
    bindir = find_bindir(None)
    data = _dereferenced_tarball(bindir, server_user())
    repository, _, tag = name.partition(":")
    try:
        client.api.import_image_from_data(
            data, repository=repository, tag=tag or "latest", changes=[f"ENV PATH={bindir}:/usr/bin:/bin"]
        )
    except Exception as exc:  # docker.errors.APIError and connection errors alike
        raise ClusterError(f"importing the PostgreSQL image {name} failed: {exc}") from None
    if not image_exists(client, name):
        raise ClusterError(f"importing the PostgreSQL image {name} left no image of that name")
    return name


def _dereferenced_tarball(bindir: str, user: OsUser) -> bytes:
    """tar -ch: symlinks followed, so the loader and library links point at real files in the image."""
    paths = _contents(bindir)
    tar = subprocess.run(["tar", "-ch", "--absolute-names", "-f", "-", *paths], capture_output=True, timeout=300)
    if tar.returncode not in (0, 1):
        raise ClusterError(f"tar of the PostgreSQL installation failed: {tar.stderr.decode(errors='replace')}")
    return _append_etc(tar.stdout, user)


def _append_etc(data: bytes, user: OsUser) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as source, tarfile.open(fileobj=buffer, mode="w") as out:
        for member in source.getmembers():
            member.name = member.name.lstrip("/")
            out.addfile(member, source.extractfile(member) if member.isfile() else None)
        for name, content in _etc(user).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            out.addfile(info, io.BytesIO(content))
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        out.addfile(tmp)
    return buffer.getvalue()
