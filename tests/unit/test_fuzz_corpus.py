"""The fuzzers' seeds and every crash they ever found, replayed; and a short fuzzing smoke of each target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fuzz

CASES = sorted(
    (target, path)
    for target in fuzz.TARGETS
    for kind in ("corpus", "crashes")
    for path in (fuzz.FUZZ / kind / target).glob("*")
    if path.is_file()
)


@pytest.mark.parametrize("target, path", CASES, ids=[f"{t}/{p.parent.name}/{p.name}" for t, p in CASES])
def test_a_saved_input_is_answered_with_a_typed_refusal_at_worst(target, path):
    fuzz.CHECKS[target](path.read_bytes())  # anything but the target's own refusal fails here


def test_every_target_has_seeds():
    assert {t for t, p in CASES if p.parent.parent.name == "corpus"} == set(fuzz.TARGETS)


@pytest.mark.parametrize("target", fuzz.TARGETS)
def test_a_short_fuzzing_run_finds_no_crash(target):
    done = subprocess.run(
        [sys.executable, fuzz.__file__, target, "--runs", "3000"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "crashes 0" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "3000 executions" in done.stdout, done.stdout
