"""Rules: which `[[rules]]` entry decides how a client of a pooled endpoint logs in (pg_hba.conf's first match)."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from ..core.config import RuleConfig, RuleMethod, RuleTls

DEFAULT = RuleConfig(method=RuleMethod.SCRAM)  # without any rule, every client logs in with SCRAM


@dataclass(frozen=True, slots=True)
class Match:
    """The rule that decided: its number in [[rules]] (from 1; 0 for the default) and its method."""

    number: int
    method: RuleMethod


@functools.lru_cache(maxsize=1024)
def _networks(addresses: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(a, strict=False) for a in addresses)


def _names(allowed: tuple[str, ...], name: str) -> bool:
    return "all" in allowed or name in allowed


def _matches(rule: RuleConfig, endpoint: str, database: str, user: str, address: str, tls: bool) -> bool:
    if rule.tls is not RuleTls.ANY and (rule.tls is RuleTls.REQUIRED) != tls:
        return False
    if not (_names(rule.endpoints, endpoint) and _names(rule.databases, database) and _names(rule.users, user)):
        return False
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:  # not an IP peer (a Unix socket): only a rule for every address matches
        return set(rule.addresses) >= {"0.0.0.0/0", "::/0"}
    return any(peer in network for network in _networks(rule.addresses))


def match(
    rules: tuple[RuleConfig, ...], endpoint: str, database: str, user: str, address: str, tls: bool
) -> Match | None:
    """The first rule that matches this client, the default when there are no rules, or None (refused)."""
    if not rules:
        return Match(0, DEFAULT.method)
    for number, rule in enumerate(rules, 1):
        if _matches(rule, endpoint, database, user, address, tls):
            return Match(number, rule.method)
    return None


def no_rule_message(endpoint: str, database: str, user: str, address: str, tls: bool) -> str:
    encryption = "SSL encryption" if tls else "no encryption"
    return f'no pgaurora rule for host "{address}", user "{user}", database "{database}", {encryption} ({endpoint})'
