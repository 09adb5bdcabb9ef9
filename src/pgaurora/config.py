"""The frozen, validated configuration: load(path) -> Config, or one ConfigError listing every problem."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from enum import Enum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_TIME_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0}
_LAG_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReaderPolicy(str, Enum):
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"


class ReaderFallback(str, Enum):
    PRIMARY = "primary"
    REFUSE = "refuse"


class RelayMode(str, Enum):
    NATIVE = "native"  # C relay threads (one per core by default), outside the GIL; needs the built extension
    PYTHON = "python"  # Protocol pipes on uvloop, both ways
    KERNEL = "kernel"  # eBPF sockmap both ways: least CPU on small queries; needs CAP_BPF
    HYBRID = "hybrid"  # eBPF sockmap client -> server, Python server -> client
    AUTO = "auto"  # native where the extension was built, else hybrid where BPF is available, else Python


class SyncMode(str, Enum):
    QUORUM = "quorum"
    STRICT = "strict"
    OFF = "off"


class LagLimit(_Frozen):
    """A replica lag bound in bytes, in seconds, or both."""

    bytes: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, value: object) -> "LagLimit":
        if isinstance(value, LagLimit):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(bytes=value)
        if isinstance(value, dict):
            return cls(**value)
        match = _LAG_RE.match(str(value))
        if not match:
            raise ValueError(f"expected a size like '16MB' or a time like '5s', got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit in _TIME_UNITS:
            return cls(seconds=number * _TIME_UNITS[unit])
        if unit in _SIZE_UNITS:
            return cls(bytes=int(number * _SIZE_UNITS[unit]))
        raise ValueError(f"unknown unit {unit!r} in {value!r} (use B, kB, MB, GB, ms, s or min)")

    def exceeded(self, lag_bytes: int | None, lag_seconds: float | None) -> bool:
        if self.bytes is not None and lag_bytes is not None and lag_bytes > self.bytes:
            return True
        return self.seconds is not None and lag_seconds is not None and lag_seconds > self.seconds


Port = Annotated[int, Field(ge=1, le=65535)]


def _loopback_or_ip(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]+$", host):
            raise ValueError(f"{host!r} is not an IP address or host name") from None
    return host


class NodeConfig(_Frozen):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
    host: str
    port: Port = 5432
    priority: int = 0
    # Where replicas reach this node, when it differs from where pgaurora reaches it.
    replication_host: str | None = None
    replication_port: Port | None = None

    _host = field_validator("host", "replication_host")(
        classmethod(lambda cls, v: v if v is None else _loopback_or_ip(v)))

    @property
    def replication_address(self) -> tuple[str, int]:
        return self.replication_host or self.host, self.replication_port or self.port


class Listen(_Frozen):
    host: str = "127.0.0.1"
    port: Port

    _host = field_validator("host")(classmethod(lambda cls, v: _loopback_or_ip(v)))


class WriterConfig(Listen):
    port: Port = 6432


class ReaderConfig(Listen):
    port: Port = 6433
    policy: ReaderPolicy = ReaderPolicy.ROUND_ROBIN
    fallback: ReaderFallback = ReaderFallback.PRIMARY


class AdminConfig(Listen):
    port: Port = 6434


class DnsConfig(Listen):
    port: Port = 8053
    enabled: bool = True
    zone: str | None = None  # default: <cluster>.pgaurora.internal
    ttl: Annotated[int, Field(ge=0, le=86400)] = 1


class ProxyConfig(_Frozen):
    max_client_connections: Annotated[int, Field(ge=1)] = 5000
    startup_timeout: Annotated[float, Field(gt=0)] = 10.0
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    failover_connect_timeout: Annotated[float, Field(ge=0)] = 30.0
    relay: RelayMode = RelayMode.AUTO
    relay_threads: Annotated[int, Field(ge=0, le=256)] = 0  # native relay threads; 0: one per core


class MonitorConfig(_Frozen):
    user: str = "postgres"
    password: str | None = None
    database: str = "postgres"
    probe_interval: Annotated[float, Field(gt=0, le=60)] = 0.5
    probe_timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    failure_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    max_replica_lag: LagLimit = LagLimit(bytes=16 * 1024**2)
    # A replica vouches that an unreachable writer is alive if it received WAL or a keepalive from it
    # this recently; the monitor writes a heartbeat on the writer every probe, so this spans ~3 of them.
    witness_window: Annotated[float, Field(gt=0, le=60)] = 1.5

    @field_validator("max_replica_lag", mode="before")
    @classmethod
    def _lag(cls, value: object) -> LagLimit:
        return LagLimit.parse(value)


class FailoverConfig(_Frozen):
    enabled: bool = True
    sync_mode: SyncMode = SyncMode.QUORUM
    replication_user: str = "replicator"
    replication_password: str | None = None
    promote_timeout: Annotated[float, Field(gt=0)] = 10.0
    catchup_timeout: Annotated[float, Field(gt=0)] = 5.0
    auto_rejoin: bool = True
    # Bytes of WAL an automatic failover may lose when nothing proves it loses none: default 0 in the
    # quorum and strict modes (never lose an acknowledged commit), 1MB when sync_mode is off.
    max_data_loss: int | None = None

    @field_validator("max_data_loss", mode="before")
    @classmethod
    def _size(cls, value: object) -> int | None:
        if value is None:
            return None
        limit = LagLimit.parse(value)
        if limit.bytes is None:
            raise ValueError(f"expected a size like '1MB' or a number of bytes, got {value!r}")
        return limit.bytes

    @property
    def data_loss_limit(self) -> int:
        if self.max_data_loss is not None:
            return self.max_data_loss
        return 1024**2 if self.sync_mode is SyncMode.OFF else 0


class Config(_Frozen):
    cluster: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")] = "demo"
    state_dir: str | None = None
    nodes: tuple[NodeConfig, ...]
    writer: WriterConfig = WriterConfig()
    reader: ReaderConfig = ReaderConfig()
    admin: AdminConfig = AdminConfig()
    dns: DnsConfig = DnsConfig()
    proxy: ProxyConfig = ProxyConfig()
    monitor: MonitorConfig = MonitorConfig()
    failover: FailoverConfig = FailoverConfig()

    @model_validator(mode="after")
    def _unique(self) -> "Config":
        problems = [] if self.nodes else ["nodes: at least one node is required"]
        problems += _duplicates("node name", [n.name for n in self.nodes])
        problems += _duplicates("node address", [f"{n.host}:{n.port}" for n in self.nodes])
        listens = [(s, getattr(self, s)) for s in ("writer", "reader", "admin")]
        if self.dns.enabled:
            listens.append(("dns", self.dns))
        problems += _duplicates("listen address", [f"{l.host}:{l.port}" for _, l in listens])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def zone(self) -> str:
        return self.dns.zone or f"{self.cluster}.pgaurora.internal"


def _duplicates(what: str, values: list[str]) -> list[str]:
    seen, dups = set(), []
    for value in values:
        if value in seen:
            dups.append(f"duplicate {what} {value!r}")
        seen.add(value)
    return dups


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    return f"{where}: {msg}"


def build(data: dict, source: str = "configuration") -> Config:
    """Validate a dict into a Config, raising one ConfigError with every problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()], source) from None


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    return build(data, str(path))
