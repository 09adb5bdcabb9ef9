"""The pgaurora image's inputs: a bad --source is one clear message, and the base image holds what runs."""

from __future__ import annotations

import io
import tarfile

from click.testing import CliRunner

from pgaurora.cli.main import cli
from pgaurora.compose import pyimage


def test_building_the_pgaurora_image_outside_a_checkout_names_the_problem(tmp_path):
    result = CliRunner().invoke(cli, ["image", "build", "--python", "--source", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path} is not a pgaurora checkout (no Dockerfile or pyproject.toml)" in result.output
    assert "Traceback" not in result.output


def test_the_python_base_holds_the_interpreter_pip_and_no_site_packages():
    with tarfile.open(fileobj=io.BytesIO(pyimage.python_tarball()), mode="r") as tar:
        names = set(tar.getnames())
        modes = {m.name: m.mode for m in tar.getmembers() if m.isdir()}
    exe = pyimage._interpreter()
    assert str(exe).lstrip("/") in names and "bin/sh" in names
    purelib = pyimage._paths()["purelib"].lstrip("/")
    assert f"{purelib}/pip/__init__.py" in names
    assert not [n for n in names if n.startswith(purelib) and not n.startswith(f"{purelib}/pip")]
    assert f"{pyimage._paths()['stdlib'].lstrip('/')}/asyncio/__init__.py" in names
    assert "etc/passwd" in names and modes["tmp"] == 0o1777
    assert all(mode & 0o555 == 0o555 for name, mode in modes.items())  # the unprivileged user reads them all
