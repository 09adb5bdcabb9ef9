"""Which relay a config gets: 'auto' prefers the native threads; a mode that cannot work is one clear error."""

from __future__ import annotations

import pytest

from pgaurora.core.config import build
from pgaurora.core.errors import ConfigError
from pgaurora.proxy import relays


class FakeNative:
    threads = 3


def _config(**proxy):
    return build({"nodes": [{"name": "n1", "host": "127.0.0.11"}], "proxy": proxy})


def test_auto_takes_the_native_relay_when_it_was_built(monkeypatch):
    asked = []
    monkeypatch.setattr(relays.NativeRelay, "open", lambda threads: asked.append(threads) or FakeNative())
    state = relays.proxy_state(_config(relay_threads=3))
    assert isinstance(state.native, FakeNative) and state.sockmap is None and asked == [3]


def test_native_without_the_extension_names_the_setting(monkeypatch):
    monkeypatch.setattr(relays.NativeRelay, "open", lambda threads: None)
    with pytest.raises(ConfigError, match=r"proxy\.relay: 'native' needs pgaurora's C extension"):
        relays.proxy_state(_config(relay="native"))


def test_python_relay_uses_neither_threads_nor_the_kernel(monkeypatch):
    monkeypatch.setattr(relays.NativeRelay, "open", lambda threads: pytest.fail("native relay opened"))
    state = relays.proxy_state(_config(relay="python"))
    assert state.native is None and state.sockmap is None


def test_relay_threads_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="relay_threads"):
        _config(relay_threads=1000)
