"""The frozen, validated configuration: load(path) -> Config, or one ConfigError listing every problem."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_TIME_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0}
_LAG_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ReaderPolicy(str, Enum):
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"


class Fallback(str, Enum):
    """What an endpoint does with no eligible member: send the session to the writer, or refuse it (57P03)."""

    WRITER = "writer"
    REFUSE = "refuse"


class RelayMode(str, Enum):
    NATIVE = "native"  # C relay threads (one per core by default), outside the GIL; needs the built extension
    PYTHON = "python"  # Protocol pipes on uvloop, both ways
    KERNEL = "kernel"  # eBPF sockmap both ways: least CPU on small queries; needs CAP_BPF
    HYBRID = "hybrid"  # eBPF sockmap client -> server, Python server -> client
    AUTO = "auto"  # native where the extension was built, else hybrid where BPF is available, else Python


class PoolMode(str, Enum):
    """How an endpoint lends server connections (docs/pooling.md)."""

    PASSTHROUGH = "passthrough"  # one backend per client, authentication relayed, channel binding end to end
    SESSION = "session"  # a pooled backend lent for the whole client session; authentication at the proxy
    TRANSACTION = "transaction"  # lent for one transaction at a time; settings carried, some statements pin


class SyncMode(str, Enum):
    QUORUM = "quorum"
    STRICT = "strict"
    OFF = "off"


class ClientTls(str, Enum):
    DISABLE = "disable"
    ALLOW = "allow"
    REQUIRE = "require"


class BackendTls(str, Enum):
    DISABLE = "disable"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_FULL = "verify-full"


class LagLimit(_Frozen):
    """A replica lag bound in bytes, in seconds, or both."""

    bytes: int | None = None
    """Bytes of WAL behind the writer."""
    seconds: float | None = None
    """Seconds of replay behind the writer."""

    @classmethod
    def parse(cls, value: object) -> LagLimit:
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
    """One PostgreSQL server of the cluster (`[[nodes]]`, one table per node)."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
    """Node name: lower case, as in synchronous_standby_names and each replica's application_name."""
    host: str
    """Address pgaurora connects to."""
    port: Port = 5432
    """Port pgaurora connects to."""
    priority: int = 0
    """Failover tie-break between replicas with the same WAL position: higher wins."""
    replication_host: str | None = None
    """Where replicas reach this node, when it differs from `host`."""
    replication_port: Port | None = None
    """Where replicas reach this node, when it differs from `port`."""

    _host = field_validator("host", "replication_host")(
        classmethod(lambda cls, v: v if v is None else _loopback_or_ip(v))
    )

    @property
    def replication_address(self) -> tuple[str, int]:
        return self.replication_host or self.host, self.replication_port or self.port


class Listen(_Frozen):
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: Port
    """Port to listen on."""

    _host = field_validator("host")(classmethod(lambda cls, v: _loopback_or_ip(v)))


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    bad = []
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            bad.append(f"{entry!r} is not an address or a network like 203.0.113.0/24")
    if bad:
        raise ValueError("; ".join(bad))
    return value


class ClientEndpoint(Listen):
    """An endpoint clients connect to, with the addresses it accepts connections from."""

    allow: tuple[str, ...] = ()
    """Client addresses or networks (CIDR) this endpoint accepts, as a security group does: a connection
    from anywhere else is closed before a byte is read, and counted. Empty: every address."""

    _allow = field_validator("allow")(classmethod(lambda cls, v: _networks(v)))
    pool_mode: PoolMode = PoolMode.PASSTHROUGH
    """`passthrough` (each client its own backend), `session` or `transaction` (pooled: `[pool]`)."""


class WriterConfig(ClientEndpoint):
    """The writer endpoint: every session reaches the current primary."""

    port: Port = 6432
    """Port to listen on."""


class ReaderConfig(ClientEndpoint):
    """The reader endpoint: sessions spread over healthy replicas that are not lagging."""

    port: Port = 6433
    """Port to listen on."""
    policy: ReaderPolicy = ReaderPolicy.ROUND_ROBIN
    """How a replica is picked for a new session: `round_robin` or `least_connections`."""
    fallback: Fallback = Fallback.WRITER
    """With no eligible replica: `writer` sends reads to the writer (`primary`, its older spelling, is
    accepted), `refuse` answers 57P03."""
    consistency_wait: Annotated[float, Field(ge=0, le=60)] = 0.1
    """Seconds a session (or, pooled, a transaction) that names `pgaurora.min_lsn` may wait for a replica to
    replay past it; then the fallback applies."""
    _fallback = field_validator("fallback", mode="before")(
        classmethod(lambda cls, v: Fallback.WRITER.value if v == "primary" else v)
    )


class CustomRole(str, Enum):
    READER = "reader"
    ANY = "any"
    SPLIT = "split"  # read-only transactions to replicas, the rest to the writer


class Consistency(str, Enum):
    """What a read on a splitting endpoint must see (`pgaurora.consistency`, per session)."""

    EVENTUAL = "eventual"  # any replica within max_replica_lag
    SESSION = "session"  # the session's own commits
    GLOBAL = "global"  # every commit acknowledged anywhere before the read began


class CustomEndpointConfig(ClientEndpoint):
    """A custom endpoint (`[[endpoints]]`): a named subset of the nodes on a port of its own, as Aurora's."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
    """Its name; DNS serves `<name>.<zone>`."""
    port: Port
    """Port to listen on."""
    role: CustomRole = CustomRole.READER
    """`reader`: its healthy, non-lagging replicas; `any`: the writer too, when it is a member."""
    nodes: tuple[str, ...] | None = None
    """The members, by name (a static list)..."""
    exclude: tuple[str, ...] = ()
    """...or every node but these."""
    fallback: Fallback = Fallback.REFUSE
    """With no member available: `refuse` (57P03 naming the endpoint) or `writer`."""
    consistency: Consistency = Consistency.SESSION
    """Role `split`: what a read sees unless the session says otherwise (`pgaurora.consistency`): `eventual`
    (any replica within max_replica_lag), `session` (the session's own commits), `global` (every commit
    acknowledged before the read began)."""
    consistency_wait: Annotated[float, Field(ge=0, le=60)] = 0.1
    """Role `split`: seconds a read may wait for a replica to replay what it must see; then the writer serves it."""

    @model_validator(mode="before")
    @classmethod
    def _split_pools(cls, data: Any) -> Any:
        """A splitting endpoint routes each transaction: it pools per transaction unless told otherwise."""
        if isinstance(data, dict) and data.get("role") == CustomRole.SPLIT.value and "pool_mode" not in data:
            return {**data, "pool_mode": PoolMode.TRANSACTION.value}
        return data

    @model_validator(mode="after")
    def _members(self) -> CustomEndpointConfig:
        if self.nodes is not None and self.exclude:
            raise ValueError("give either nodes or exclude, not both")
        if self.nodes is not None and not self.nodes:
            raise ValueError("nodes is empty")
        if self.role is CustomRole.SPLIT and self.pool_mode is not PoolMode.TRANSACTION:
            raise ValueError('role "split" routes each transaction on its own: it needs pool_mode = "transaction"')
        return self


class AdminScope(str, Enum):
    """What an admin credential may do; each scope includes the ones before it."""

    READ = "read"  # /status, /events, /metrics, /backups, /openapi.json
    OPERATE = "operate"  # switchover, drain, reload, scaling, backups, maintenance, rejoin
    ADMIN = "admin"  # failover with data loss, backtrack, removal of a node

    def allows(self, needed: AdminScope) -> bool:
        order = list(AdminScope)
        return order.index(self) >= order.index(needed)


class AdminToken(_Frozen):
    """One credential of the admin API (`[[admin.tokens]]`): a bearer token kept in a file, with a scope."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    """Name the audit trail records for requests made with this token."""
    scope: AdminScope
    """`read`, `operate` or `admin`."""
    file: str
    """File holding the token (mode 600: readable by pgaurora's user alone); read at start."""

    @model_validator(mode="after")
    def _file(self) -> AdminToken:
        problems = _secret_file_problems(f"token {self.name!r} file", self.file)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AdminCertificate(_Frozen):
    """A TLS client certificate accepted as an admin credential (`[[admin.certificates]]`), by its common name."""

    common_name: Annotated[str, Field(min_length=1, max_length=64)]
    """The certificate's subject common name; the audit trail records it as `cert:<common_name>`."""
    scope: AdminScope
    """`read`, `operate` or `admin`."""


class AdminConfig(Listen):
    """The admin HTTP API (its routes: docs/api.md or GET /openapi.json); every request needs a bearer token."""

    port: Port = 6434
    """Port to listen on."""
    tokens: tuple[AdminToken, ...] = ()
    """Bearer tokens with their scopes, beside the `local` admin token pgaurora keeps itself."""
    token_file: str | None = None
    """Where pgaurora keeps its own `admin`-scope token (name `local`), made with mode 600 at the first start:
    default `<state_dir>/admin.token`. The CLI finds it through a copy under ~/.local/state/pgaurora/admin/."""
    open_metrics: bool = False
    """Serve GET /metrics without a token, for a scraper that cannot send one."""
    tls: bool = False
    """Serve HTTPS with the `[tls]` certificate and key (read again on reload, as the endpoints do)."""
    client_ca_file: str | None = None
    """With `tls`: TLS client certificates signed by this CA are credentials too, as `certificates` maps them."""
    certificates: tuple[AdminCertificate, ...] = ()
    """Client certificates by common name, each with a scope (needs `client_ca_file`)."""

    @model_validator(mode="after")
    def _certificates(self) -> AdminConfig:
        problems = []
        if self.client_ca_file and not self.tls:
            problems.append("client_ca_file needs tls = true")
        if self.certificates and not self.client_ca_file:
            problems.append("certificates need client_ca_file, the CA that signs them")
        if self.client_ca_file and not os.path.exists(self.client_ca_file):
            problems.append(f"client_ca_file: no such file {self.client_ca_file!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("tokens")
    @classmethod
    def _unique(cls, tokens: tuple[AdminToken, ...]) -> tuple[AdminToken, ...]:
        names = [t.name for t in tokens]
        taken = sorted({n for n in names if names.count(n) > 1} | ({"local"} & set(names)))
        if taken:
            raise ValueError(f"token names must be unique and not 'local' (pgaurora's own): {', '.join(taken)}")
        return tokens


class DnsConfig(Listen):
    """The authoritative DNS server for writer, reader and node names (UDP and TCP)."""

    port: Port = 8053
    """Port to listen on, UDP and TCP."""
    enabled: bool = True
    """Serve DNS at all."""
    zone: str | None = None
    """Zone served; default `<cluster>.pgaurora.internal`."""
    ttl: Annotated[int, Field(ge=0, le=86400)] = 1
    """TTL of every answer, in seconds: short, so clients follow a failover."""


class ProxyConfig(_Frozen):
    """Client sessions: limits, deadlines and the relay that carries established sessions."""

    max_client_connections: Annotated[int, Field(ge=1)] = 5000
    """Client connections at once, beyond which clients get 53300."""
    max_client_connections_per_address: Annotated[int, Field(ge=0)] = 0
    """Client connections at once from one address (0: no limit); beyond it a client gets 53300 at its
    startup packet, before any server connection is opened for it."""
    max_client_connections_per_role: Annotated[int, Field(ge=0)] = 0
    """Client connections at once that name one role at startup (0: no limit); beyond it, 53300."""
    client_idle_timeout: Annotated[float, Field(ge=0)] = 0.0
    """Pooled endpoints: seconds a client may stay idle between transactions before it is closed with
    57P05 (0: never). Passthrough sessions hold a backend: PostgreSQL's idle_session_timeout serves them."""
    startup_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a client has to send its startup packet before it is closed."""
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    """Seconds to connect to a node."""
    failover_connect_timeout: Annotated[float, Field(ge=0)] = 30.0
    """Seconds a new writer session waits for a primary during a failover, before 57P03."""
    relay: RelayMode = RelayMode.AUTO
    """`auto`, `native` (C threads), `hybrid` or `kernel` (eBPF), or `python`."""
    relay_threads: Annotated[int, Field(ge=0, le=256)] = 0
    """Native relay threads; 0 means one per core."""


class PoolConfig(_Frozen):
    """Pooling, for endpoints whose pool_mode is `session` or `transaction`: sizes, deadlines, and
    authentication at the proxy (SCRAM-SHA-256 against secrets from auth_query or auth_file)."""

    pool_size: Annotated[int, Field(ge=1, le=10000)] = 20
    """Server connections per (node, database, user)."""
    min_pool_size: Annotated[int, Field(ge=0, le=10000)] = 0
    """Server connections per pool kept open: opened ahead (within a second) once a client of the pool's
    role has logged in, since they log in with a client's key, and never closed by server_idle_timeout."""
    reserve_pool_size: Annotated[int, Field(ge=0, le=10000)] = 0
    """Extra server connections a pool may open for a client that has waited reserve_pool_timeout."""
    reserve_pool_timeout: Annotated[float, Field(ge=0)] = 3.0
    """Seconds a client waits before the reserve may serve it."""
    server_idle_timeout: Annotated[float, Field(gt=0)] = 600.0
    """Seconds an idle server connection is kept (above min_pool_size)."""
    server_lifetime: Annotated[float, Field(gt=0)] = 3600.0
    """Seconds after which a server connection is closed once it is idle, and replaced when needed."""
    query_wait_timeout: Annotated[float, Field(gt=0)] = 120.0
    """Seconds a client waits for a server connection before it gets 53300 and is closed."""
    max_prepared_statements: Annotated[int, Field(ge=0, le=100000)] = 200
    """Transaction mode: protocol-level prepared statements remembered per client and kept per server
    connection (least recently used ones are closed beyond it); 0 passes statement names through unchanged."""
    auth_file: str | None = None
    """A file of `"role" "SCRAM-SHA-256$..."` lines (PgBouncer's format), read at start."""
    auth_user: str | None = None
    """The role auth_query runs as (pgaurora up creates `pgaurora_auth`, which can run nothing else)."""
    auth_password: str | None = None
    """auth_user's password."""
    auth_query: str = "SELECT usename, passwd FROM pgaurora.user_lookup($1)"
    """Query that returns a role's name and SCRAM secret (a SECURITY DEFINER function over pg_authid)."""
    auth_dbname: str = "postgres"
    """Database auth_query runs in."""
    auth_cache_seconds: Annotated[float, Field(ge=0)] = 60.0
    """Seconds a secret read by auth_query is kept; a failed login reads it again at once."""

    @model_validator(mode="after")
    def _sizes(self) -> PoolConfig:
        if self.min_pool_size > self.pool_size:
            raise ValueError(f"min_pool_size ({self.min_pool_size}) is above pool_size ({self.pool_size})")
        if self.auth_file is not None and not os.path.exists(self.auth_file):
            raise ValueError(f"auth_file: no such file {self.auth_file!r}")
        return self


class TlsConfig(_Frozen):
    """Encryption in flight: clients to the endpoints, and pgaurora to the nodes."""

    cert_file: str | None = None
    """PEM certificate (chain) the endpoints present to clients."""
    key_file: str | None = None
    """PEM private key of `cert_file`; reloaded with it on SIGHUP or `POST /reload`."""
    ca_file: str | None = None
    """PEM CA bundle: clients that present a certificate must have one signed by it."""
    client_tls: ClientTls | None = None
    """`disable`, `allow` (TLS when the client asks) or `require` (plaintext sessions get 28000);
    default `allow` when `cert_file` is set, else `disable`."""
    backend_tls: BackendTls = BackendTls.DISABLE
    """TLS to the nodes, for every session and the monitor: `disable`, `prefer`, `require` or
    `verify-full` (the node's certificate must be signed by `backend_ca_file` and name its host)."""
    backend_ca_file: str | None = None
    """PEM CA bundle that signed the nodes' certificates (needed by `verify-full`)."""

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        problems = []
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("cert_file and key_file go together")
        if self.client_mode is not ClientTls.DISABLE and self.cert_file is None:
            problems.append(f"client_tls = {self.client_mode.value!r} needs cert_file and key_file")
        if self.backend_tls is BackendTls.VERIFY_FULL and self.backend_ca_file is None:
            problems.append("backend_tls = 'verify-full' needs backend_ca_file")
        for name in ("cert_file", "key_file", "ca_file", "backend_ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"{name}: no such file {path!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def client_mode(self) -> ClientTls:
        if self.client_tls is not None:
            return self.client_tls
        return ClientTls.ALLOW if self.cert_file else ClientTls.DISABLE


class DcsConfig(_Frozen):
    """Several pgaurora instances in front of one cluster: etcd elects the one that acts."""

    etcd: tuple[str, ...]
    """etcd v3 endpoints, e.g. `["http://127.0.0.1:2379"]`; any member will do, the others are
    tried when one fails."""
    prefix: str | None = None
    """Key prefix; default `/pgaurora/<cluster>/`."""
    ttl: Annotated[float, Field(ge=1, le=60)] = 3.0
    """Seconds of the leader's lease: a leader that cannot renew it for this long stops acting, and
    another instance takes over."""
    instance: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9._:-]{1,100}$")] = None
    """This instance's name; default the host name and the admin port."""
    username: str | None = None
    """etcd user, when etcd has authentication on."""
    password: str | None = None
    """Its password."""
    ca_file: str | None = None
    """PEM CA bundle that signed etcd's certificate, for `https://` endpoints (default: the system's)."""
    cert_file: str | None = None
    """PEM client certificate, for an etcd started with `--client-cert-auth`."""
    key_file: str | None = None
    """PEM private key of `cert_file`."""

    @field_validator("etcd")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one etcd endpoint is required")
        for url in value:
            if not re.match(r"^https?://[A-Za-z0-9.-]+:\d+/?$", url):
                raise ValueError(f"{url!r} is not an etcd endpoint like 'http://127.0.0.1:2379'")
        if len({url.partition(":")[0] for url in value}) > 1:
            raise ValueError("the etcd endpoints mix http:// and https://: use one scheme for all")
        return value

    @model_validator(mode="after")
    def _tls(self) -> DcsConfig:
        problems = []
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("cert_file and key_file go together")
        given = [name for name in ("ca_file", "cert_file", "key_file") if getattr(self, name) is not None]
        if given and not self.tls:
            problems.append(f"{', '.join(given)} need https:// etcd endpoints")
        problems += [
            f"{name}: no such file {getattr(self, name)!r}" for name in given if not Path(getattr(self, name)).is_file()
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def tls(self) -> bool:
        return self.etcd[0].startswith("https://")


class BackupConfig(_Frozen):
    """Continuous WAL archiving and backups with pgBackRest, for a cluster pgaurora composes."""

    repository: str | None = None
    """Directory of the pgBackRest repository; default `<state_dir>/backups`."""
    retention_full: Annotated[int, Field(ge=1, le=100)] = 2
    """Full backups kept (with the differential and incremental ones and the WAL that depend on them)."""
    full_every: Annotated[float | None, Field(gt=0)] = None
    """Seconds between scheduled full backups (e.g. 86400); none scheduled when unset."""
    incr_every: Annotated[float | None, Field(gt=0)] = None
    """Seconds between scheduled incremental backups, between the full ones."""
    cipher_pass: str | None = None
    """Passphrase that encrypts the repository (aes-256-cbc); prefer `cipher_pass_file` or `cipher_pass_env`."""
    cipher_pass_env: str | None = None
    """Name of an environment variable holding the passphrase."""
    cipher_pass_file: str | None = None
    """File holding the passphrase; it must not be readable by group or others."""
    options: dict[str, str] = {}
    """More pgBackRest repository options, passed through: e.g. `repo1-type = "s3"`, `repo1-s3-bucket`."""
    backtrack_keep: Annotated[float, Field(ge=0)] = 86400.0
    """Seconds the nodes a backtrack replaced are kept (stopped) so that `pgaurora backtrack --undo` can
    return to them; then their files are removed."""

    @model_validator(mode="after")
    def _cipher(self) -> BackupConfig:
        given = [n for n in ("cipher_pass", "cipher_pass_env", "cipher_pass_file") if getattr(self, n) is not None]
        problems = [f"{', '.join(given)}: give the passphrase one way only"] if len(given) > 1 else []
        if self.cipher_pass_env is not None and not os.environ.get(self.cipher_pass_env):
            problems.append(f"cipher_pass_env: the environment variable {self.cipher_pass_env} is not set")
        if self.cipher_pass_file is not None:
            problems += _secret_file_problems("cipher_pass_file", self.cipher_pass_file)
        bad = [k for k in self.options if not re.match(r"^repo1-[a-z0-9-]+$", k) or k == "repo1-path"]
        problems += [f"options: {k!r} is not a repo1-* option pgaurora leaves to you" for k in bad]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def passphrase(self) -> str | None:
        """The repository's passphrase, from wherever the config says it is; None: not encrypted."""
        if self.cipher_pass_file is not None:
            return Path(self.cipher_pass_file).read_text().strip()
        if self.cipher_pass_env is not None:
            return os.environ[self.cipher_pass_env]
        return self.cipher_pass


def _secret_file_problems(name: str, path: str) -> list[str]:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return [f"{name}: cannot read {path!r} ({exc.strerror})"]
    if mode & 0o077:
        return [f"{name}: {path} is readable by group or others (mode {mode & 0o777:o}); chmod 600 it"]
    if not Path(path).read_text().strip():
        return [f"{name}: {path} is empty"]
    return []


class RuleMethod(str, Enum):
    """How a client that a rule matches logs in."""

    SCRAM = "scram"  # SCRAM-SHA-256 against the role's secret
    TOKEN = "token"  # a token from `pgaurora token`, sent as the password, over TLS only
    REJECT = "reject"  # refused with 28000


class RuleTls(str, Enum):
    ANY = "any"
    REQUIRED = "required"  # hostssl
    NONE = "none"  # hostnossl


class RuleConfig(_Frozen):
    """One `[[rules]]` entry, in the spirit of a pg_hba.conf line, for pooled endpoints: the first rule that
    matches a client decides how it logs in; a client no rule matches is refused with 28000."""

    endpoints: tuple[str, ...] = ("all",)
    """Endpoint names (writer, reader, custom ones), or all."""
    databases: tuple[str, ...] = ("all",)
    """Database names, or all."""
    users: tuple[str, ...] = ("all",)
    """Role names, or all."""
    addresses: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    """Client addresses, as CIDRs."""
    tls: RuleTls = RuleTls.ANY
    """`required` (hostssl), `none` (hostnossl) or `any`."""
    method: RuleMethod
    """`scram`, `token` or `reject`."""

    @field_validator("addresses")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _networks(value)


class TokenKey(_Frozen):
    """A key that signs and verifies tokens (HMAC-SHA-256), kept in a file of mode 600."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    """Named in each token it signs (its `kid`), so that the right key verifies it."""
    file: str
    """At least 32 bytes of secret (`openssl rand -base64 48 > file`)."""

    @model_validator(mode="after")
    def _file(self) -> TokenKey:
        problems = _secret_file_problems(f"tokens key {self.id!r}", self.file)
        if not problems and len(Path(self.file).read_bytes().strip()) < 32:
            problems.append(f"tokens key {self.id!r}: {self.file} holds fewer than 32 bytes")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TokensConfig(_Frozen):
    """Short-lived tokens instead of passwords, for `[[rules]]` whose method is `token`."""

    keys: tuple[TokenKey, ...] = ()
    """The first signs; every one verifies. A key a reload removes still verifies until max_ttl has passed."""
    default_ttl: Annotated[float, Field(gt=0)] = 900.0
    """Seconds a token lives when its request names no ttl."""
    max_ttl: Annotated[float, Field(gt=0, le=86400)] = 3600.0
    """The longest life a token may be given, in seconds."""
    login_file: str | None = None
    """`"role" "password"` lines (mode 600) for roles that log in by token alone: pgaurora derives from the
    password the key it logs into the nodes with. A role that logged in with SCRAM since pgaurora started
    needs none."""

    @model_validator(mode="after")
    def _sane(self) -> TokensConfig:
        ids = [k.id for k in self.keys]
        problems = [f"tokens key id {i!r} appears more than once" for i in sorted({i for i in ids if ids.count(i) > 1})]
        if self.default_ttl > self.max_ttl:
            problems.append(f"default_ttl ({self.default_ttl:g}) is above max_ttl ({self.max_ttl:g})")
        if self.login_file is not None:
            problems += _secret_file_problems("tokens login_file", self.login_file)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class MonitorConfig(_Frozen):
    """How the monitor probes the nodes and decides that one is down."""

    user: str = "postgres"
    """Role the monitor logs in as: a superuser, or one with pg_monitor and pg_promote granted."""
    password: str | None = None
    """Its password."""
    database: str = "postgres"
    """Database the monitor connects to."""
    probe_interval: Annotated[float, Field(gt=0, le=60)] = 0.5
    """Seconds between probes of every node."""
    probe_timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    """Seconds a probe may take before the node counts as unreachable."""
    failure_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    """Probe intervals without an answer before a node is down (3 x 0.5 s: about 1.5 s)."""
    max_replica_lag: LagLimit = LagLimit(bytes=16 * 1024**2)
    """Replicas further behind leave the reader endpoint: a size (`16MB`) or a time (`5s`)."""
    witness_window: Annotated[float, Field(gt=0, le=60)] = 1.5
    """Seconds: a replica that received WAL or a keepalive from an unreachable writer this recently
    proves the writer alive, and blocks the failover. The monitor writes a heartbeat on the writer at
    every probe, so this spans about three of them."""

    @field_validator("max_replica_lag", mode="before")
    @classmethod
    def _lag(cls, value: object) -> LagLimit:
        return LagLimit.parse(value)


class FailoverConfig(_Frozen):
    """Automatic failover, synchronous commit and the loss a failover may accept."""

    enabled: bool = True
    """Promote a replica when the writer is down."""
    sync_mode: SyncMode = SyncMode.QUORUM
    """`quorum`: commits wait for `sync_acks` live standbys (or every live one, when fewer are left), and go
    asynchronous when none is left; `strict`: they wait even then; `off`: asynchronous replication."""
    sync_acks: Annotated[int, Field(ge=1, le=15)] = 1
    """k: commits wait for k synchronous standbys (`ANY k`). A failover then proves it loses nothing while
    all but k-1 voters answer, so the writer and k-1 replicas can be lost together: each extra
    acknowledgement is one more failure survived, paid in commit latency."""
    replication_user: str = "replicator"
    """Role replicas stream as, written into primary_conninfo when the monitor re-points them."""
    replication_password: str | None = None
    """Its password."""
    replication_passfile: str | None = None
    """A pgpass file holding that password, at this path on every node's host: primary_conninfo then names it
    instead of carrying the password, which PostgreSQL writes to its log whenever the setting changes. (Start
    the nodes without PGPASSWORD in their environment: libpq prefers it to the file.)"""
    promote_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds pg_promote may take."""
    catchup_timeout: Annotated[float, Field(gt=0)] = 5.0
    """Seconds a promoted replica may take to replay what it received, and a switchover target to
    receive the old writer's last WAL."""
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 5.0
    """Seconds a switchover lets the transactions in flight on transaction-pooled endpoints finish on the
    old writer (new ones wait) before it stops it; what still runs then ends with the old writer."""
    auto_rejoin: bool = True
    """Rewind a fenced former primary into a replica by itself (clusters pgaurora starts)."""
    max_data_loss: int | None = None
    """Bytes of WAL an automatic failover may lose when nothing proves it loses none (a size like
    `1MB`); default 0 in the quorum and strict modes, 1MB when sync_mode is off."""

    @field_validator("max_data_loss", mode="before")
    @classmethod
    def _size(cls, value: object) -> int | None:
        if value is None:
            return None
        limit = LagLimit.parse(value)
        if limit.bytes is None:
            raise ValueError(f"expected a size like '1MB' or a number of bytes, got {value!r}")
        return limit.bytes

    @model_validator(mode="after")
    def _acks(self) -> FailoverConfig:
        if self.sync_acks > 1 and self.sync_mode is SyncMode.OFF:
            raise ValueError(f"sync_acks = {self.sync_acks} needs synchronous commit: sync_mode is off")
        return self

    @property
    def data_loss_limit(self) -> int:
        if self.max_data_loss is not None:
            return self.max_data_loss
        return 1024**2 if self.sync_mode is SyncMode.OFF else 0


class HealConfig(_Frozen):
    """Self-healing of the nodes pgaurora composes (`pgaurora up`): a node that exits unasked is brought back."""

    enabled: bool = True
    """Start a crashed node again, rewind a crashed former primary, rebuild a node that cannot start."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    """Tries in a row (starts, rewinds, rebuilds) before pgaurora gives up on a node and says so."""
    rebuild_after: Annotated[int, Field(ge=1, le=100)] = 3
    """Failed starts in a row after which the node is rebuilt from the writer (pg_basebackup); a node whose
    data directory is gone is rebuilt at once."""
    backoff: Annotated[float, Field(gt=0, le=600)] = 1.0
    """Seconds before the second try; each later try waits twice as long, up to `max_backoff`."""
    max_backoff: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """The longest wait between two tries."""
    stable_after: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds a node must stay up before its count of tries starts again from zero."""
    commands: dict[str, str] = {}
    """For `pgaurora proxy -c`: a shell command per node name that starts that node on its host (for
    example an ssh to systemctl start); pgaurora runs it when the node is unreachable and its writer
    is elsewhere. Without one, the host's own supervisor (systemd's `Restart=`) must restart it."""


class Config(_Frozen):
    """The whole file."""

    cluster: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")] = "demo"
    """Cluster name; the DNS zone is `<cluster>.pgaurora.internal`."""
    state_dir: str | None = None
    """Directory for the monitor's state (monitor.json: writer, epoch, fenced nodes, voters) and
    events.jsonl. Without it, a restart forgets them."""
    nodes: tuple[NodeConfig, ...]
    """The PostgreSQL servers, at least one."""
    writer: WriterConfig = WriterConfig()
    """`[writer]`."""
    reader: ReaderConfig = ReaderConfig()
    """`[reader]`."""
    admin: AdminConfig = AdminConfig()
    """`[admin]`."""
    dns: DnsConfig = DnsConfig()
    """`[dns]`."""
    proxy: ProxyConfig = ProxyConfig()
    """`[proxy]`."""
    monitor: MonitorConfig = MonitorConfig()
    """`[monitor]`."""
    failover: FailoverConfig = FailoverConfig()
    """`[failover]`."""
    tls: TlsConfig = TlsConfig()
    """`[tls]`."""
    dcs: DcsConfig | None = None
    """`[dcs]`: several instances agreed through etcd; without it, one instance and its state file."""
    endpoints: tuple[CustomEndpointConfig, ...] = ()
    """`[[endpoints]]`: custom endpoints."""
    backup: BackupConfig | None = None
    """`[backup]`: WAL archiving and backups with pgBackRest (clusters pgaurora composes)."""
    heal: HealConfig = HealConfig()
    """`[heal]`: starting again, rewinding or rebuilding nodes that crashed."""
    pool: PoolConfig = PoolConfig()
    """`[pool]`: pooling and authentication at the proxy, for endpoints in session or transaction mode."""
    rules: tuple[RuleConfig, ...] = ()
    """`[[rules]]`: who may log in to a pooled endpoint, and how; without any, every client uses SCRAM."""
    tokens: TokensConfig = TokensConfig()
    """`[tokens]`: signing keys for short-lived tokens."""

    def _rule_problems(self, endpoints: set[str]) -> list[str]:
        problems = []
        for number, rule in enumerate(self.rules, 1):
            unknown = sorted(set(rule.endpoints) - endpoints - {"all"})
            if unknown:
                problems.append(f"rules[{number}]: unknown endpoints {', '.join(unknown)}")
            if rule.method is RuleMethod.TOKEN and not self.tokens.keys:
                problems.append(f"rules[{number}]: method 'token' needs [tokens] keys")
            if rule.method is RuleMethod.TOKEN and rule.tls is RuleTls.NONE:
                problems.append(f"rules[{number}]: a token is only accepted over TLS, and this rule matches none")
        return problems

    @model_validator(mode="after")
    def _unique(self) -> Config:
        problems = [] if self.nodes else ["nodes: at least one node is required"]
        problems += _duplicates("node name", [n.name for n in self.nodes])
        problems += _duplicates("node address", [f"{n.host}:{n.port}" for n in self.nodes])
        listens = [(s, getattr(self, s)) for s in ("writer", "reader", "admin")]
        if self.dns.enabled:
            listens.append(("dns", self.dns))
        listens += [(e.name, e) for e in self.endpoints]
        problems += _duplicates("listen address", [f"{listen.host}:{listen.port}" for _, listen in listens])
        problems += _duplicates(
            "endpoint or node name",
            ["writer", "reader", "proxy", *(n.name for n in self.nodes), *(e.name for e in self.endpoints)],
        )
        names = {n.name for n in self.nodes}
        for endpoint in self.endpoints:
            unknown = sorted((set(endpoint.nodes or ()) | set(endpoint.exclude)) - names)
            if unknown:
                problems.append(f"endpoints.{endpoint.name}: unknown nodes {', '.join(unknown)}")
        if self.admin.tls and not self.tls.cert_file:
            problems.append("admin.tls: HTTPS on the admin port needs [tls] cert_file and key_file")
        pooled = [name for name, e in listens if getattr(e, "pool_mode", PoolMode.PASSTHROUGH) != PoolMode.PASSTHROUGH]
        if pooled and not (self.pool.auth_file or self.pool.auth_user):
            problems.append(
                f"pool: {', '.join(pooled)} pool connections, so pgaurora authenticates clients itself: "
                "set auth_user (with auth_password) for auth_query, or auth_file"
            )
        problems += self._rule_problems({name for name, _ in listens} - {"admin", "dns"})
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def zone(self) -> str:
        return self.dns.zone or f"{self.cluster}.pgaurora.internal"

    @property
    def dcs_prefix(self) -> str:
        prefix = self.dcs.prefix if self.dcs and self.dcs.prefix else f"/pgaurora/{self.cluster}/"
        return prefix if prefix.endswith("/") else prefix + "/"

    @property
    def instance(self) -> str:
        if self.dcs is not None and self.dcs.instance:
            return self.dcs.instance
        return f"{socket.gethostname()}:{self.admin.port}"


def _duplicates(what: str, values: list[str]) -> list[str]:
    seen, dups = set(), []
    for value in values:
        if value in seen:
            dups.append(f"duplicate {what} {value!r}")
        seen.add(value)
    return dups


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    return f"{where}: {msg}"


def build(data: dict[str, Any], source: str = "configuration") -> Config:
    """Validate a dict into a Config, raising one ConfigError with every problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(dict(e)) for e in exc.errors()], source) from None


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read it: {exc}"], str(path)) from None
    return loads(text, str(path))


def loads(text: str, source: str = "configuration") -> Config:
    """A Config from TOML text (what load() reads), or one ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source) from None
    return build(data, source)
