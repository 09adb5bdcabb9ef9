"""ProxyState: every live session, counted per node, and the cancel keys they learned; changed only here."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .native import NativeRelay
    from .sockmap import SockMap

CancelKey = tuple[int, bytes]


class Tracked(Protocol):
    """What the table keeps of an established session (relay.Session), and how it ends one."""

    node: str
    kind: str
    cancel_key: CancelKey | None

    def terminate(self, sqlstate: str, message: str) -> None: ...


@dataclass(eq=False)
class Seat:
    """One client connection as the limits count it: its address from accept, its role from its startup."""

    address: str
    role: str | None = None


class ProxyState:
    """Shared by both endpoints, so a cancel request may arrive on either."""

    def __init__(
        self, sockmap: SockMap | None = None, both_ways: bool = True, native: NativeRelay | None = None
    ) -> None:
        self.native = native  # the C relay threads, when chosen and built
        self.sockmap = sockmap  # the kernel relay, when chosen and this process could load it
        self.both_ways = both_ways  # kernel relays server -> client too (else only client -> server)
        self.clients = 0  # client connections open, in any phase
        self.sessions_by_node: dict[str, set[Tracked]] = defaultdict(set)
        self.cancel_keys: dict[CancelKey, tuple[str, int]] = {}
        self.sessions_total: Counter[tuple[str, str]] = Counter()  # (endpoint, node) -> sessions established
        self.refused_total: Counter[str] = Counter()  # SQLSTATE -> clients the proxy itself turned away
        self.tls_total = 0  # client connections that started a TLS handshake
        self.allowed_total: Counter[str] = Counter()  # endpoint -> connections its allow-list let in
        self.disallowed_total: Counter[str] = Counter()  # endpoint -> connections closed by its allow-list
        self.pooled_clients: dict[CancelKey, Any] = {}  # the key each pooled client was given -> the client
        self.pins: Counter[str] = Counter()  # reason -> transaction-pooled clients pinned to their connection
        self.pool_sets: dict[str, Any] = {}  # endpoint -> its pool.Pools, for /status and /metrics
        self.by_address: Counter[str] = Counter()  # client address -> its connections open
        self.by_role: Counter[str] = Counter()  # role -> client connections that named it at startup
        self.limited_total: Counter[str] = Counter()  # limit (total, address, role) -> clients it refused
        self.rules_total: Counter[tuple[str, str, str]] = Counter()  # (endpoint, rule, accepted|refused) -> logins
        # splitting endpoints: (endpoint, consistency, replica|writer, why) -> transactions; (endpoint,
        # consistency) -> seconds reads waited for a replica to replay, and reads that waited
        self.split_total: Counter[tuple[str, str, str, str]] = Counter()
        self.split_wait_seconds: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.split_waits: Counter[tuple[str, str]] = Counter()

    def split_counted(self, endpoint: str, mode: str, why: str, waited: float | None = None) -> None:
        """One transaction routed by a splitting endpoint: `replica`, or why the writer took it; waited: how
        long a read waited for a replica to replay what it must see (None: it did not wait)."""
        self.split_total[(endpoint, mode, "replica" if why == "replica" else "writer", why)] += 1
        if waited is not None:
            self.split_wait_seconds[(endpoint, mode)] += waited
            self.split_waits[(endpoint, mode)] += 1

    def split(self) -> dict[str, Any]:
        """For /status: per splitting endpoint and consistency, transactions by where and why, and the waits."""
        found: dict[str, Any] = {}
        for (endpoint, mode, where, why), count in sorted(self.split_total.items()):
            entry = found.setdefault(endpoint, {}).setdefault(mode, {"replica": 0, "writer": {}})
            if where == "replica":
                entry["replica"] += count
            else:
                entry["writer"][why] = count
        for (endpoint, mode), waits in self.split_waits.items():
            entry = found.setdefault(endpoint, {}).setdefault(mode, {"replica": 0, "writer": {}})
            entry["waits"] = waits
            entry["wait_seconds"] = round(self.split_wait_seconds[(endpoint, mode)], 3)
        return found

    def client_opened(self, address: str = "") -> Seat:
        self.clients += 1
        self.by_address[address] += 1
        return Seat(address)

    def rule_counted(self, endpoint: str, rule: str, outcome: str) -> None:
        self.rules_total[(endpoint, rule, outcome)] += 1

    def seated(self, seat: Seat, role: str) -> None:
        """The client named its role (its startup packet): it counts against that role's limit too."""
        if seat.role is None:
            seat.role = role
            self.by_role[role] += 1

    def over_limit(self, seat: Seat, total: int, per_address: int, per_role: int = 0) -> str | None:
        """Which limit this client goes over, counted, with the message it gets (53300); None when it fits.
        A limit of 0 is no limit; the role counts once the client named it."""
        checks = (
            ("total", self.clients, total, ""),
            ("address", self.by_address[seat.address], per_address, f" from {seat.address}"),
            ("role", self.by_role[seat.role] if seat.role is not None else 0, per_role, f' for role "{seat.role}"'),
        )
        for kind, count, limit, whom in checks:
            if limit and count > limit:
                self.limited_total[kind] += 1
                name = "max_client_connections" + ("" if kind == "total" else f"_per_{kind}")
                return f"sorry, too many clients already{whom} ({name} = {limit})"
        return None

    def tls_started(self) -> None:
        self.tls_total += 1

    def client_closed(self, seat: Seat | None = None) -> None:
        self.clients -= 1
        if seat is None:
            return
        for counter, key in ((self.by_address, seat.address), (self.by_role, seat.role)):
            if key is not None:
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

    def session_started(self, session: Tracked) -> None:
        self.sessions_by_node[session.node].add(session)
        self.sessions_total[(session.kind, session.node)] += 1

    def refused(self, sqlstate: str) -> None:
        self.refused_total[sqlstate] += 1

    def session_ended(self, session: Tracked) -> None:
        self.sessions_by_node[session.node].discard(session)
        if session.cancel_key is not None:
            self.cancel_keys.pop(session.cancel_key, None)

    def learned_cancel_key(self, session: Tracked, key: CancelKey, address: tuple[str, int]) -> None:
        session.cancel_key = key
        self.cancel_keys[key] = address

    def pools(self) -> list[dict[str, Any]]:
        """Per pool: its endpoint, node, database and user; clients waiting; server connections active and idle."""
        return [
            {
                "endpoint": endpoint,
                "node": key.node,
                "database": key.database,
                "user": key.user,
                "clients_waiting": len(pool.waiters),
                "server_active": pool.active,
                "server_idle": len(pool.idle_links),
                "longest_wait_seconds": round(pool.longest_wait, 3),
            }
            for endpoint, pools in sorted(self.pool_sets.items())
            for key, pool in sorted(pools.pools.items(), key=lambda item: (item[0].node, item[0].database))
        ]

    def lent_on(self, node: str) -> int:
        """Pooled server connections to node lent to clients now: transactions in flight there."""
        return sum(pools.lent_on(node) for pools in self.pool_sets.values())

    def count(self, node: str) -> int:
        return len(self.sessions_by_node.get(node, ()))

    def sessions(self, node: str) -> list[Tracked]:
        return list(self.sessions_by_node.get(node, ()))
