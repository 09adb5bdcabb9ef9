"""The alert rules in docs/monitoring pass promtool's own checks and its unit tests (alerts.test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package) is installed by .ci/run")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=MONITORING)


def test_the_alert_rules_are_valid():
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0 and "SUCCESS: 8 rules found" in done.stdout, done.stdout + done.stderr


def test_each_alert_fires_on_the_series_that_should_fire_it():
    done = _promtool("test", "rules", "alerts.test.yml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_a_broken_rule_is_caught(tmp_path):
    broken = (MONITORING / "alerts.yml").read_text().replace("pgaurora_node_up == 0", "pgaurora_node_up == ")
    (tmp_path / "alerts.yml").write_text(broken)
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package) is installed by .ci/run")
    done = subprocess.run(["promtool", "check", "rules", str(tmp_path / "alerts.yml")], capture_output=True, text=True)
    assert done.returncode != 0
