"""The relay that carries established sessions, as the config asks: native C threads, the kernel, or Python."""

from __future__ import annotations

from ..core.config import Config, RelayMode
from ..core.errors import ConfigError
from .native import NativeRelay
from .sockmap import SockMap
from .state import ProxyState


def _kernel_relay(mode: RelayMode) -> SockMap | None:
    if mode not in (RelayMode.KERNEL, RelayMode.HYBRID, RelayMode.AUTO):
        return None
    sockmap = SockMap.open(record_boundaries=mode is RelayMode.KERNEL)
    if sockmap is None and mode is not RelayMode.AUTO:
        raise ConfigError(
            [
                f"proxy.relay: {mode.value!r} needs eBPF sockmap support and CAP_BPF "
                "(run as root), which this machine lacks; use 'auto' or 'python'"
            ]
        )
    return sockmap


def proxy_state(config: Config) -> ProxyState:
    """The relay the config asks for; 'auto' takes the first that works of native, hybrid and Python."""
    mode = config.proxy.relay
    if mode in (RelayMode.NATIVE, RelayMode.AUTO):
        native = NativeRelay.open(config.proxy.relay_threads)
        if native is not None:
            return ProxyState(native=native)
        if mode is RelayMode.NATIVE:
            raise ConfigError(
                [
                    "proxy.relay: 'native' needs pgaurora's C extension, which was not built "
                    "(no C compiler at install time?); reinstall with gcc, or use 'auto' or 'python'"
                ]
            )
    return ProxyState(_kernel_relay(mode), both_ways=mode is RelayMode.KERNEL)
