"""SSRF guard for outbound HTTP(S): image fetches and webhook callbacks.

A URL supplied by a caller must never make this service talk to itself, to the internal network
or to the cloud metadata endpoint. The guard works at two levels, on every request *and on every
redirect hop* (httpx sends each hop through the transport again):

1. **URL check** (:func:`check_url`): scheme ``http``/``https`` only; a host is required; IPv4
   literals must be written canonically (``2130706433``, ``0177.0.0.1``, ``0x7f.1`` and other
   spellings that resolvers accept but humans misread are refused outright); a literal IP is
   vetted at once.
2. **Connect-time check** (:class:`GuardedBackend`): the host is resolved here with
   ``getaddrinfo``; if *any* resolved address is loopback, private, link-local (incl.
   169.254.169.254), unique-local, CGNAT, multicast, reserved, unspecified, or an IPv6 form
   embedding one of those (IPv4-mapped, 6to4, Teredo, NAT64), the request is refused. The socket
   then connects to the vetted address itself (pinned), so a second DNS answer cannot differ
   (DNS rebinding). The URL, ``Host`` header, TLS SNI and certificate check stay those of the
   hostname, because only the TCP connect is redirected.

``QueueSettings.allow_private_hosts`` opts hosts back in: an entry is either a hostname (exact,
case-insensitive) or a CIDR (``10.1.2.0/24``, ``127.0.0.1/32``). Environment proxies are never
used (they would bypass the guard).

Errors: :class:`~moderation.exceptions.UrlRefusedError` (permanent) for a refused URL or
address; DNS failures are :class:`~moderation.exceptions.ImageFetchTransient` when temporary and
:class:`~moderation.exceptions.ImageFetchError` when the name does not exist.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from moderation.exceptions import ImageFetchError, ImageFetchTransient, UrlRefusedError
from moderation.settings import Settings

__all__ = [
    "ALLOWED_SCHEMES",
    "ANY_ADDRESS",
    "Allowlist",
    "GuardedBackend",
    "GuardedTransport",
    "check_ip",
    "check_url",
    "guarded_client",
    "resolve_vetted",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")

# Checked in order; the first match names the reason in the error message.
_BLOCKED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified / 'this network'"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.169.254/32", "cloud metadata endpoint"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_BLOCKED_NETS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why) for net, why in _BLOCKED
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks that may be private. Build with :meth:`parse`."""

    hostnames: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """Split entries into CIDRs / IPs and hostnames.

        Raises:
            ValueError: an entry is empty.
        """
        hostnames: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                raise ValueError("empty entry in allow_private_hosts")
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hostnames.add(_norm_host(entry))
        return cls(frozenset(hostnames), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return _norm_host(host) in self.hostnames

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


#: Every address: for checking a URL's scheme and syntax only (addresses are vetted after DNS).
ANY_ADDRESS = Allowlist.parse(["0.0.0.0/0", "::/0"])


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped IPv6 address"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = blocked_reason(inner)
            return f"IPv6 embedding a {why} IPv4 address" if why else None
    for net, why in _BLOCKED_NETS:
        if ip.version == net.version and ip in net:
            return why
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not globally routable"
    return None


def check_ip(ip: IPAddress, *, host: str, allowlist: Allowlist) -> None:
    """Refuse ``ip`` (reached for ``host``) unless public or allowlisted.

    Raises:
        UrlRefusedError: the address is internal and neither it nor ``host`` is allowlisted.
    """
    why = blocked_reason(ip)
    if why is None or allowlist.allows_host(host) or allowlist.allows_ip(ip):
        return
    shown = host if _norm_host(host) == str(ip) else f"{host} ({ip})"
    raise UrlRefusedError(
        f"refused to connect to {shown}: {why} address (SSRF guard; add it to "
        "MODERATION_QUEUE__ALLOW_PRIVATE_HOSTS to allow)"
    )


def _parse_inet_aton(host: str) -> int | None:
    """The 32-bit value the C resolver's ``inet_aton`` gives a numeric host, else None.

    One to four parts, each decimal, octal (leading ``0``) or hex (``0x``); the last part fills
    every byte the earlier ones leave: ``a`` = 32 bits, ``a.b`` = 8 + 24, ``a.b.c`` = 8 + 8 + 16,
    ``a.b.c.d`` = 8 x 4. So ``127.1`` is 127.0.0.1 and ``0177.0.0.1`` is 127.0.0.1, as
    ``socket.inet_aton`` says (which also accepts trailing garbage; this does not).
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or any(not p for p in parts):
        return None
    values: list[int] = []
    for part in parts:
        p = part.lower()
        try:
            if p.startswith("0x"):
                values.append(int(p[2:] or "0", 16))
            elif len(p) > 1 and p.startswith("0"):
                values.append(int(p[1:], 8))
            elif p.isdigit():
                values.append(int(p, 10))
            else:
                return None
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (5 - len(values))):
        return None
    value = last
    for index, v in enumerate(head):
        value |= v << (8 * (3 - index))
    return value


def _literal_ip(host: str) -> IPAddress | None:
    """The IP a literal host denotes. Non-canonical IPv4 spellings are refused.

    Raises:
        UrlRefusedError: ``host`` is an IPv4 address written in decimal, octal, hex or short form.
    """
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    value = _parse_inet_aton(bare)
    if value is not None:
        raise UrlRefusedError(
            f"refused host {host!r}: non-canonical IPv4 spelling of "
            f"{ipaddress.IPv4Address(value)} (write addresses as a.b.c.d)"
        )
    return None


def check_url(url: str | httpx.URL, allowlist: Allowlist) -> None:
    """Check scheme and host of ``url`` before any connection is made.

    Raises:
        UrlRefusedError: bad scheme, no host, odd IP spelling, or a literal internal address.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise UrlRefusedError(f"malformed URL {text[:200]!r}: {exc}") from exc
    if scheme not in ALLOWED_SCHEMES:
        raise UrlRefusedError(
            f"URL scheme {scheme or '(none)'!r} is not allowed (allowed: http, https)"
        )
    if not host:
        raise UrlRefusedError(f"URL {text[:200]!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefusedError("URLs with embedded credentials are not allowed")
    ip = _literal_ip(host)
    if ip is not None:
        check_ip(ip, host=host, allowlist=allowlist)


def resolve_vetted(host: str, port: int, allowlist: Allowlist) -> list[IPAddress]:
    """Resolve ``host`` and vet every address it resolves to.

    Raises:
        UrlRefusedError: any resolved address is internal (and not allowlisted).
        ImageFetchTransient: temporary DNS failure.
        ImageFetchError: the name does not resolve.
    """
    literal = _literal_ip(host)
    if literal is not None:
        check_ip(literal, host=host, allowlist=allowlist)
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", -11)):
            raise ImageFetchTransient(f"DNS lookup of {host!r} failed: {exc}") from exc
        raise ImageFetchError(f"host {host!r} does not resolve: {exc}", code="dns_failed") from exc
    except (UnicodeError, OSError) as exc:
        raise ImageFetchError(f"cannot resolve host {host!r}: {exc}", code="dns_failed") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise ImageFetchError(f"host {host!r} resolved to no address", code="dns_failed")
    for ip in addresses:  # ALL of them: one bad answer poisons the name
        check_ip(ip, host=host, allowlist=allowlist)
    return addresses


class GuardedBackend(httpcore.SyncBackend):
    """httpcore network backend that connects only to vetted, pinned addresses."""

    def __init__(self, allowlist: Allowlist) -> None:
        self.allowlist = allowlist

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve_vetted(host, port, self.allowlist)
        for index, ip in enumerate(addresses):
            try:
                return super().connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                if index == len(addresses) - 1:
                    raise
        raise UrlRefusedError(f"host {host!r} has no address to connect to")  # unreachable


class GuardedTransport(httpx.HTTPTransport):
    """An ``httpx.HTTPTransport`` whose every request and connection passes the SSRF guard."""

    def __init__(
        self,
        allowlist: Allowlist,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
        backend: GuardedBackend | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=32, max_keepalive_connections=8)
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self.allowlist = allowlist
        # Same pool httpx would build, with the guarded network backend (no proxy, no UDS).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend or GuardedBackend(allowlist),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        check_url(request.url, self.allowlist)
        return super().handle_request(request)


def guarded_client(
    settings: Settings,
    *,
    timeout: httpx.Timeout | float | None = None,
    max_redirects: int | None = None,
    verify: ssl.SSLContext | bool = True,
    headers: Sequence[tuple[str, str]] = (),
    backend: GuardedBackend | None = None,
    limits: httpx.Limits | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` safe to point at caller-supplied URLs (images, webhooks).

    Redirects are followed (at most ``settings.images.max_redirects``), each hop re-checked.
    Connect timeout ``settings.images.connect_timeout_s``, other timeouts
    ``settings.queue.http_timeout_s`` unless ``timeout`` is given. ``backend``: a
    :class:`GuardedBackend` (subclass) of the caller's, for its own limits on the connections.

    Raises:
        ValueError: ``settings.queue.allow_private_hosts`` has an empty entry.
    """
    allowlist = Allowlist.parse(settings.queue.allow_private_hosts)
    if timeout is None:
        timeout = httpx.Timeout(
            settings.queue.http_timeout_s, connect=settings.images.connect_timeout_s
        )
    return httpx.Client(
        transport=GuardedTransport(allowlist, verify=verify, limits=limits, backend=backend),
        timeout=timeout,
        follow_redirects=True,
        max_redirects=settings.images.max_redirects if max_redirects is None else max_redirects,
        trust_env=False,
        headers=[("User-Agent", "moderation-fetcher/0.1"), *headers],
    )
