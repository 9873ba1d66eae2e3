"""Who is calling, decided from the request's head before a byte of its body is read.

**API keys** (:class:`TenantKeys`): ``Authorization: Bearer <key>`` names the tenant. Every
configured key is compared in constant time, so timing says nothing about which key (or how
much of one) was right. With no keys configured (development mode only) every caller is tenant
``default``.

**Authenticate first** (:class:`AuthenticateFirst`, ASGI middleware outside the body limits of
:mod:`moderation.api.edge`): a request to a protected path (``/v1/...``; in production also
``/docs`` and ``/openapi.json``) with a missing or wrong key is answered 401 from its headers,
with ``Connection: close``; its body is never parsed or kept, so an unauthenticated caller
costs at most what the server reads ahead of the application (a few KiB) in memory, whatever
``Content-Length`` says. The close is a lingering one (:mod:`moderation.http.lingering`): what
the client still sends is read and dropped for a bounded time, so it reads the 401 instead of a
connection reset.
The tenant of a good key is left in the request's state for the endpoints.

**Client address** (:class:`TrustedProxies`): the socket peer is the client, unless it is
one of ``api_trusted_proxies`` (CIDRs); only then is the client the right-most address of
``X-Forwarded-For`` that is not a trusted proxy (uvicorn's ``ProxyHeadersMiddleware``, which also
takes ``X-Forwarded-Proto`` from such a proxy). Sign-in throttling and the audit log use that
address. The servers themselves never read these headers (``proxy_headers=False``: uvicorn would
otherwise trust 127.0.0.1 by default).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from moderation.http.lingering import refuse_lingering
from moderation.http.problems import API_REALM, problem_for, problem_response

__all__ = ["STATE_TENANT", "AuthenticateFirst", "TenantKeys", "TrustedProxies"]

#: Where :class:`AuthenticateFirst` leaves the caller's tenant (``request.state.tenant``).
STATE_TENANT = "tenant"


class TenantKeys:
    """The configured API keys and their tenants."""

    def __init__(self, keys: Iterable[tuple[str, str]]) -> None:
        self._keys = [(key.encode(), tenant) for key, tenant in keys]

    @property
    def open(self) -> bool:
        """No key is configured: the API is open (development mode only)."""
        return not self._keys

    def tenant_of(self, authorization: str | None) -> str | None:
        """The tenant of an ``Authorization`` header's bearer key, or None (no header, another
        scheme, or not a configured key)."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
        found: str | None = None
        for key, tenant in self._keys:  # every key, constant time each
            if hmac.compare_digest(given, key) and given:
                found = tenant
        return found


class AuthenticateFirst:
    """Refuses requests to protected paths without a good API key before their body is read
    (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, keys: TenantKeys, prefixes: tuple[str, ...], exact: frozenset[str]
    ) -> None:
        self.app = app
        self.keys = keys
        self.prefixes = prefixes
        self.exact = exact

    def _protected(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keys.open or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"),
            None,
        )
        tenant = self.keys.tenant_of(header)
        if tenant is None:
            response = problem_response(
                problem_for(
                    401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)"
                ),
                headers={"WWW-Authenticate": API_REALM, "Connection": "close"},
            )
            await refuse_lingering(response, scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_TENANT] = tenant
        await self.app(scope, receive, send)


class TrustedProxies:
    """The client-address rule of the module docstring, for ``app.add_middleware`` (only when
    at least one proxy is trusted: without, the socket peer is the client)."""

    def __init__(self, app: ASGIApp, *, proxies: list[str]) -> None:
        self._inner = ProxyHeadersMiddleware(app, trusted_hosts=list(proxies))  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inner(scope, receive, send)  # type: ignore[arg-type]
