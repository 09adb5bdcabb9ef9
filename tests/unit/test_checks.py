"""The checks CI runs (ruff, import-linter, mypy) pass on the tree, and each rejects a deliberate violation
planted in a temporary copy: a check that cannot fail checks nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The package and its config, copied: violations are planted here, never in the tree."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _run(where: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(where / "src")}  # the copy, ahead of the installed package
    return subprocess.run(argv, cwd=where, env=env, capture_output=True, text=True, timeout=300)


def _plant(copy: Path, module: str, text: str) -> None:
    path = copy / "src" / "pgaurora" / module
    path.write_text(path.read_text() + text)


def test_ruff_passes_on_the_copy_and_rejects_an_unused_import(copy):
    assert _run(copy, sys.executable, "-m", "ruff", "check", "src").returncode == 0
    _plant(copy, "core/polling.py", "\nimport json\n")
    result = _run(copy, sys.executable, "-m", "ruff", "check", "src")
    assert result.returncode != 0 and "F401" in result.stdout, result.stdout


def test_ruff_format_rejects_unformatted_code(copy):
    _plant(copy, "core/polling.py", "\nX = [1,2 ,3]\n")
    result = _run(copy, sys.executable, "-m", "ruff", "format", "--check", "src/pgaurora/core/polling.py")
    assert result.returncode != 0, result.stdout


def test_import_linter_rejects_wire_importing_core(copy):
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    assert _run(copy, lint).returncode == 0
    _plant(copy, "wire/codec.py", "\nfrom ..core import errors as _planted  # noqa: E402\n")
    result = _run(copy, lint)
    assert result.returncode != 0 and "wire imports nothing of pgaurora BROKEN" in result.stdout, result.stdout


def test_mypy_strict_rejects_an_untyped_function_in_core(copy):
    check = (sys.executable, "-m", "mypy", "--cache-dir", str(copy / ".mypy_cache"), "src/pgaurora/core/polling.py")
    assert _run(copy, *check).returncode == 0
    _plant(copy, "core/polling.py", "\n\ndef planted(x):\n    return x\n")
    result = _run(copy, *check)
    assert result.returncode != 0 and "no-untyped-def" in result.stdout, result.stdout


def test_a_type_ignore_needs_an_error_code(copy):
    check = (sys.executable, "-m", "mypy", "--cache-dir", str(copy / ".mypy_cache"), "src/pgaurora/core/polling.py")
    _plant(copy, "core/polling.py", '\n\nPLANTED: int = "x"  # type: ignore\n')
    result = _run(copy, *check)
    assert result.returncode != 0 and "ignore-without-code" in result.stdout, result.stdout


def test_import_linter_rejects_an_import_circle_hidden_behind_type_checking(copy):
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    _plant(copy, "proxy/state.py", "\nif TYPE_CHECKING:\n    from .relay import Session as _Planted  # noqa: F401\n")
    result = _run(copy, lint)
    assert result.returncode != 0 and "no import circles between sibling modules or packages BROKEN" in result.stdout
