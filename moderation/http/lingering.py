"""Refusing a request whose body is still arriving, so that the client reads the refusal.

An edge middleware that refuses a request early (a body over its limit, no good API key) answers
before reading the body and closes the connection. Closing a TCP socket whose receive buffer
still holds unread bytes makes the kernel send a reset (RST) instead of a FIN; a client still
sending its body then gets ``ECONNRESET``, and the reset also discards the answer waiting in the
client's own receive buffer: the 413 or 401 is lost, and the caller sees a broken connection
instead of a clear error. Whether it happens depends on timing (it does on a busy machine).

:func:`refuse_lingering` does what web servers call a *lingering close* (Apache's
``lingering_close``, nginx's ``lingering_close``/``lingering_time``): it sends the whole answer
(headers with ``Content-Length`` and ``Connection: close``, and the body) but holds back the
ASGI message that ends the response, because the server closes the socket on that message. It
then reads and discards what the client still sends (nothing is kept: memory stays flat) until
the client has sent its whole body or hung up, or for at most ``linger_s`` seconds in all and
``idle_s`` seconds without a byte (nginx's ``lingering_time`` 30 s, ``lingering_timeout`` 5 s),
and only then ends the response, and with it the connection. A client that sent
``Expect: 100-continue`` is never told to continue, so it sends no body: nothing to wait for.
"""

from __future__ import annotations

import anyio
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

__all__ = ["LINGER_IDLE_S", "LINGER_S", "refuse_lingering"]

#: The longest a refused connection is read after its answer, and without a byte.
LINGER_S = 30.0
LINGER_IDLE_S = 5.0


async def refuse_lingering(
    response: Response,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    linger_s: float = LINGER_S,
    idle_s: float = LINGER_IDLE_S,
) -> int:
    """Send ``response`` (which should say ``Connection: close``), then discard the rest of the
    request body for a bounded time before ending the response (see the module docstring).

    Returns:
        The body bytes read and discarded after the answer.
    """

    async def held(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            message = {**message, "more_body": True}
        await send(message)

    await response(scope, _no_body, held)
    drained = 0 if _expects_continue(scope) else await _discard(receive, linger_s, idle_s)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return drained


async def _discard(receive: Receive, linger_s: float, idle_s: float) -> int:
    drained = 0
    with anyio.move_on_after(linger_s):
        while True:
            message: Message | None = None
            with anyio.move_on_after(idle_s):
                message = await receive()
            if message is None or message["type"] != "http.request":
                return drained  # idle too long, or the client hung up
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return drained
    return drained


def _expects_continue(scope: Scope) -> bool:
    return any(
        name == b"expect" and value.lower() == b"100-continue"
        for name, value in scope.get("headers", ())
    )


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
