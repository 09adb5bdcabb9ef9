"""The pgaurora image, offline: a Python base made from this machine's interpreter, and the Dockerfile on it.

With internet access, `docker build .` builds the same Dockerfile on a public Python image. Without it, no
base image can be pulled, so `pgaurora image build --python` makes one the way the PostgreSQL image is made:
the interpreter, its standard library (no site-packages), the libraries `ldd` names, /bin/sh, the CA
certificates and this machine's pip. The Dockerfile then installs pgaurora from wheels that this machine's
pip fetched beforehand, from whatever index it is configured with: no host is named anywhere.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ..core.errors import ClusterError
from .image import _libraries, image_exists

IMAGE_ENV = "PGAURORA_IMAGE"
DEFAULT_IMAGE = "pgaurora/pgaurora:local"
BASE_IMAGE = "pgaurora/python:local"
USER_ID = 10001  # the Dockerfile's USER: not root, and no account of the host
_SKIPPED = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "__pycache__"}
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def image_name() -> str:
    return os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)


def _paths() -> dict[str, str]:
    """Where this interpreter lives (the base one, not a virtual environment's)."""
    base = {
        "base": sys.base_prefix,
        "platbase": sys.base_exec_prefix,
        "installed_base": sys.base_prefix,
        "installed_platbase": sys.base_exec_prefix,
    }
    return sysconfig.get_paths(vars=base)


def _interpreter() -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    exe = Path(sys.base_exec_prefix) / "bin" / version
    if not exe.exists():
        raise ClusterError(f"no interpreter at {exe}: cannot make a Python base image from this machine")
    return exe


def _skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if _SKIPPED & set(Path(info.name).parts[-1:]):
        return None
    if info.isdir():
        info.mode |= 0o555  # readable by the image's unprivileged user (a pyenv Python lives under /root)
    return info


def _wheel_libraries(wheels: Path) -> set[str]:
    """The system libraries the wheels' extensions load (manylinux wheels may use libgcc_s and libstdc++)."""
    with tempfile.TemporaryDirectory(prefix="pgaurora-wheels-") as unpacked:
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(Path(unpacked) / wheel.stem)
        found = _libraries(list(Path(unpacked).rglob("*.so*")))
        return {lib for lib in found if not lib.startswith(unpacked)}  # not those the wheels carry


def python_tarball(extra_libraries: frozenset[str] | set[str] = frozenset()) -> bytes:
    """The base image's files: interpreter, standard library, their libraries, a shell, pip, certificates."""
    import pip

    exe, paths = _interpreter(), _paths()
    dynload = [p for p in Path(paths["platstdlib"], "lib-dynload").glob("*.so")]
    libraries = sorted(_libraries([exe, Path("/bin/sh"), *dynload]) | extra_libraries)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as tar:
        for path in [str(exe), "/bin/sh", *libraries]:
            tar.add(path, arcname=path.lstrip("/"), filter=_skip)
        tar.add(paths["stdlib"], arcname=paths["stdlib"].lstrip("/"), filter=_skip)
        pip_dir = Path(pip.__file__).parent
        tar.add(str(pip_dir), arcname=f"{paths['purelib'].lstrip('/')}/pip", filter=_skip)
        if os.path.exists(CA_BUNDLE):
            tar.add(CA_BUNDLE, arcname=CA_BUNDLE.lstrip("/"))
        _link(tar, f"{exe.parent}/python3".lstrip("/"), exe.name)
        _file(tar, "etc/passwd", f"root:x:0:0::/root:/bin/sh\npgaurora:x:{USER_ID}:{USER_ID}::/tmp:/bin/sh\n")
        _file(tar, "etc/group", f"root:x:0:\npgaurora:x:{USER_ID}:\n")
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
    return buffer.getvalue()


def _file(tar: tarfile.TarFile, name: str, content: str) -> None:
    data = content.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


def build_base(client, wheels: Path, name: str = BASE_IMAGE) -> str:
    repository, _, tag = name.partition(":")
    bindir = _interpreter().parent
    try:
        client.api.import_image_from_data(
            python_tarball(_wheel_libraries(wheels)),
            repository=repository,
            tag=tag or "latest",
            changes=[f"ENV PATH={bindir}:/usr/local/bin:/usr/bin:/bin"],
        )
    except Exception as exc:  # docker.errors.APIError and connection errors alike
        raise ClusterError(f"importing the Python base image {name} failed: {exc}") from None
    return name


def source_dir(given: str | None) -> Path:
    """The pgaurora checkout whose Dockerfile is built: given, or the current directory."""
    source = Path(given or ".").resolve()
    missing = [f for f in ("Dockerfile", "pyproject.toml") if not (source / f).is_file()]
    if missing:
        raise ClusterError(
            f"{source} is not a pgaurora checkout (no {' or '.join(missing)}): run this in one, or pass --source"
        )
    return source


def build(client, source: Path, name: str | None = None, force: bool = False) -> str:
    """The pgaurora image: its base from this machine's Python, pgaurora and its dependencies from wheels."""
    name = name or image_name()
    if not force and image_exists(client, name):
        return name
    with tempfile.TemporaryDirectory(prefix="pgaurora-image-") as context:
        shutil.copy(source / "Dockerfile", context)
        _wheels(source, Path(context) / "wheels")
        base = build_base(client, Path(context) / "wheels")
        try:
            client.images.build(
                path=context, tag=name, buildargs={"BASE": base}, network_mode="host", rm=True, forcerm=True
            )
        except Exception as exc:  # docker.errors.BuildError carries the build log
            log = "".join(chunk.get("stream", "") for chunk in getattr(exc, "build_log", []) or [])
            raise ClusterError(f"building {name} failed: {exc}\n{log[-2000:]}") from None
        finally:
            client.images.prune(filters={"dangling": True, "label": "pgaurora.stage=build"})
    return name


def _wheels(source: Path, into: Path) -> None:
    """pgaurora and every dependency as wheels, fetched by this machine's pip from its configured index."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(into), str(source)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise ClusterError(f"pip could not make the wheels for the image: {done.stderr.strip()[-2000:]}")
