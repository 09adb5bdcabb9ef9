"""Which settings a rolling restart may set: checked before anything is touched."""

from __future__ import annotations

import pytest

from pgaurora.core.errors import ActionFailed
from pgaurora.operations.maintenance import check_settings


def test_ordinary_restart_settings_pass():
    check_settings({"shared_buffers": "256MB", "max_connections": "400", "auto_explain.log_min_duration": "1s"})


@pytest.mark.parametrize(
    "name, problem",
    [
        ("primary_conninfo", "primary_conninfo is managed by pgaurora"),
        ("port", "port is managed by pgaurora"),
        ("shared buffers", "'shared buffers' is not a setting name"),
        ("x'; DROP", "is not a setting name"),
    ],
)
def test_managed_or_malformed_names_are_refused(name, problem):
    with pytest.raises(ActionFailed) as info:
        check_settings({name: "1"})
    assert problem in str(info.value)
