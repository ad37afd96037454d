"""Pure: whose address a request comes from when proxies we trust stand in front
(``X-Forwarded-For``). The API's sign-in throttle and UI-call limits and the web's forwarding
use this one rule (README, "Sign-in: whose address the throttle counts")."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["Network", "client_address", "is_trusted", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> tuple[Network, ...]:
    """``"127.0.0.1/32, ::1"`` as networks (a bad one raises ``ValueError``)."""
    return tuple(ipaddress.ip_network(n.strip()) for n in value.split(",") if n.strip())


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    """Is ``address`` (an IP literal) inside one of ``networks``? Anything else is not."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(
    peer: str | None, forwarded_for: str | Iterable[str] | None, trusted: tuple[Network, ...]
) -> str:
    """The client's address, as the nearest untrusted party says it is.

    ``forwarded_for``: the ``X-Forwarded-For`` header (or all of them, in order: one list).
    From a peer that is not a trusted proxy: the peer (its ``X-Forwarded-For`` is ignored).
    From a trusted proxy: the RIGHTMOST hop that is not itself a trusted proxy; hops left of it
    were written by the client and prove nothing. Every proxy appends the address it was called
    from, so walking from the right over trusted proxies ends at the first address a trusted
    proxy saw (if every hop is trusted, the leftmost). A hop that is not an address ends the
    walk: the address nearest to its right is the client's."""
    nearest = peer or "unknown"
    if forwarded_for is None:
        chain = ""
    elif isinstance(forwarded_for, str):
        chain = forwarded_for
    else:
        chain = ",".join(forwarded_for)
    if not chain.strip() or not is_trusted(nearest, trusted):
        return nearest
    for hop in reversed(chain.split(",")):
        address = _address(hop)
        if address is None:
            return nearest
        nearest = address
        if not is_trusted(address, trusted):
            return address
    return nearest


def _address(hop: str) -> str | None:
    """The address of one ``X-Forwarded-For`` hop (``[v6]:port`` and ``v4:port`` too)."""
    hop = hop.strip()
    if hop.startswith("[") and "]" in hop:
        hop = hop[1 : hop.index("]")]
    elif hop.count(":") == 1:
        hop = hop.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None
