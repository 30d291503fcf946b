"""Who is asking: the client address of an HTTP request or a websocket handshake, as every per-address rule sees it.

The rate limits (``moltstreet.throttling``), the admin's login lockout (django-axes), the websocket connection caps
(``trading.consumers``), ``/metrics`` and the linking of agents registered from one address
(``agents.services.agent_register``) all ask here, so they agree on who a client is.

The address is the socket's peer (``REMOTE_ADDR``, the ASGI scope's ``client``) unless ``TRUSTED_PROXIES`` says how
many proxies in front of the server append to ``X-Forwarded-For``: then it is the entry that many places from the
right, the one the outermost trusted proxy saw. The header is never trusted by default, or any client could pick
its own address, and with it a fresh budget (docs/decisions.md 25).

An IPv6 client is counted by its /64 network, not its full address: one subscriber line is routinely given a whole
/64, so per-address budgets on full IPv6 addresses would give every client 2**64 of them (docs/decisions.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
IPV6_CLIENT_PREFIX = 64


def client_address(remote_addr: str | None, forwarded_for: str | None) -> Address | None:
    """The client's IP address from the peer address and the ``X-Forwarded-For`` header (``TRUSTED_PROXIES``);
    ``None`` when what is found is not an IP address. An IPv4-mapped IPv6 address is returned as IPv4."""
    proxies = settings.TRUSTED_PROXIES
    raw = remote_addr or ""
    if proxies > 0 and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        raw = hops[-min(proxies, len(hops))]
    try:
        address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def request_address(request: Any) -> Address | None:
    """:func:`client_address` of a Django or DRF request."""
    meta = request.META
    return client_address(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"))


def scope_address(scope: Mapping[str, Any]) -> Address | None:
    """:func:`client_address` of an ASGI scope (a websocket handshake)."""
    client = scope.get("client") or (None, None)
    forwarded = None
    for name, value in scope.get("headers", []):
        if name.lower() == b"x-forwarded-for":
            forwarded = value.decode("latin-1")
    return client_address(client[0], forwarded)


def network_key(address: Address | None) -> str:
    """The unit per-address rules count by: the IPv4 address itself, or the IPv6 /64 network (``"2001:db8::/64"``);
    ``"unknown"`` when there is no address (a client behind a misconfigured proxy, a test client)."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


def request_network(request: Any) -> str:
    """:func:`network_key` of a request's client."""
    return network_key(request_address(request))


def axes_client_ip(request: Any) -> str | None:
    """The client address for django-axes (``AXES_CLIENT_IP_CALLABLE``), so the admin's login lockout counts failures
    per address as the API's rate limits do: the IPv4 address, or the first address of the IPv6 /64 (axes stores an
    IP address, not a network); ``None`` when unknown."""
    address = request_address(request)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False).network_address)
    return str(address) if address is not None else None
