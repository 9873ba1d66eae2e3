"""What a tenant is told when its image could not be fetched. Pure.

A fetch error's own message is for operators: it names hosts, addresses, ports, redirect
targets, endpoints and settings. Told to a tenant, the differences between "does not resolve",
"resolves to an internal address", "port closed" and "timed out" map the service's network. So
a tenant sees :func:`tenant_fetch_error`: the codes that only describe its own content as they
are (not found, too large, outside its sources), and one generic ``fetch_failed`` for everything
about reaching a host, always with a fixed message. The detail goes to the worker's log and the
``moderation_errors_total{code}`` metric (codes come from the exception tree: a bounded set).
"""

from __future__ import annotations

__all__ = ["FETCH_FAILED", "tenant_fetch_error"]

#: The one code a tenant sees for "the host could not be reached, or may not be contacted".
FETCH_FAILED = "fetch_failed"

_GENERIC = (
    "the image could not be fetched: its host could not be reached, or is not one this "
    "service may contact"
)

#: Codes that describe the tenant's own reference or content, with the fixed message it gets.
_AS_IS: dict[str, str] = {
    "not_found": "the image was not found at its URL",
    "forbidden": "the image's host or bucket refused access to it",
    "fetch_too_large": "the image is larger than the size limit",
    "too_many_redirects": "the image's URL redirected too many times",
    "http_4xx": "the image's host answered with a client error (HTTP 4xx)",
    "http_5xx": "the image's host answered with a server error (HTTP 5xx)",
    "http_status": "the image's host did not answer with the image",
    "s3_unavailable": "the object store did not answer; try again later",
    "source_not_allowed": (
        "this S3 location is not one of the S3 sources configured for your tenant"
    ),
    "inline_expired": "the uploaded image expired before the job ran",
    "bad_reference": "the image reference is malformed",
    "bad_scheme": "the image reference's scheme is not supported",
}


def tenant_fetch_error(code: str) -> tuple[str, str]:
    """The ``(code, message)`` a tenant sees for a fetch error with internal ``code``."""
    message = _AS_IS.get(code)
    if message is not None:
        return code, message
    return FETCH_FAILED, _GENERIC
