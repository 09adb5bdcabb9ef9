"""Which relay a config gets: 'auto' prefers the native threads, and an explicit mode that cannot work is one clear error."""

from __future__ import annotations

import pytest

from pgaurora import app
from pgaurora.config import build
from pgaurora.errors import ConfigError


class FakeNative:
    threads = 3


def _config(**proxy):
    return build({"nodes": [{"name": "n1", "host": "127.0.0.11"}], "proxy": proxy})


def test_auto_takes_the_native_relay_when_it_was_built(monkeypatch):
    asked = []
    monkeypatch.setattr(app.NativeRelay, "open", lambda threads: asked.append(threads) or FakeNative())
    state = app.proxy_state(_config(relay_threads=3))
    assert isinstance(state.native, FakeNative) and state.sockmap is None and asked == [3]


def test_native_without_the_extension_names_the_setting(monkeypatch):
    monkeypatch.setattr(app.NativeRelay, "open", lambda threads: None)
    with pytest.raises(ConfigError, match=r"proxy\.relay: 'native' needs pgaurora's C extension"):
        app.proxy_state(_config(relay="native"))


def test_python_relay_uses_neither_threads_nor_the_kernel(monkeypatch):
    monkeypatch.setattr(app.NativeRelay, "open", lambda threads: pytest.fail("native relay opened"))
    state = app.proxy_state(_config(relay="python"))
    assert state.native is None and state.sockmap is None


def test_relay_threads_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="relay_threads"):
        _config(relay_threads=1000)
