"""Hash exchanges through the ``threatexchange`` library's ``SignalExchangeAPI`` implementations
(the :class:`~moderation.ports.ExchangeFeed` port): NCMEC's hash sharing API, Meta's
ThreatExchange (Graph API ``threat_updates``) and StopNCII.

Each feed runs the library's ``fetch_iter`` from a checkpoint and turns every delta into PDQ
additions (per upstream record key) and removals (a tombstone upstream, or a record the
library's merge drops); other signal types are counted, not kept. The checkpoint is the
library's dataclass, pickled: it only ever goes back to the same library (our own database).

Errors: an HTTP 401/403 from the exchange is :class:`~moderation.exceptions.ExchangeAuthError`
(permanent: fix the credentials; also the Graph API's 400 with error code 190), a connection
error, timeout or 5xx :class:`~moderation.exceptions.ExchangeUnavailable` (transient),
anything else the library raises :class:`~moderation.exceptions.ExchangeError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import requests
from threatexchange.exchanges import fetch_state
from threatexchange.exchanges.clients.fb_threatexchange import api as te_api
from threatexchange.exchanges.clients.ncmec import hash_api as ncmec_api
from threatexchange.exchanges.clients.stopncii import api as stopncii_api
from threatexchange.exchanges.collab_config import CollaborationConfigWithDefaults
from threatexchange.exchanges.impl.fb_threatexchange_api import (
    FBThreatExchangeCollabConfig,
    FBThreatExchangeSignalExchangeAPI,
)
from threatexchange.exchanges.impl.ncmec_api import NCMECCollabConfig, NCMECSignalExchangeAPI
from threatexchange.exchanges.impl.stop_ncii_api import (
    StopNCIICheckpoint,
    StopNCIISignalExchangeAPI,
    StopNCIISignalMetadata,
)
from threatexchange.exchanges.signal_exchange_api import SignalExchangeAPI
from threatexchange.signal_type.pdq.signal import PdqSignal

from moderation.exceptions import ExchangeAuthError, ExchangeError, ExchangeUnavailable
from moderation.ports import ExchangeDelta
from moderation.settings import ExchangeSyncSettings

__all__ = ["LibraryExchangeFeed", "open_exchange_feed"]


class _NCMEC(NCMECSignalExchangeAPI):
    """NCMEC with an optional base URL (a proxy, or a local server in tests)."""

    base_url: str = ""

    def get_client(self, environment: ncmec_api.NCMECEnvironment) -> ncmec_api.NCMECHashAPI:
        client = super().get_client(environment)
        if self.base_url:
            client._base_url = self.base_url.rstrip("/")
        return client


def _graph_auth_error(response: requests.Response | None) -> bool:
    """The Graph API (ThreatExchange) answers a bad or expired token with HTTP 400 and error
    code 190 (``OAuthException``)."""
    if response is None:
        return False
    try:
        error = response.json().get("error", {})
    except ValueError:
        return False
    return isinstance(error, dict) and (
        error.get("code") == 190 or error.get("type") == "OAuthException"
    )


class _StopNCII(StopNCIISignalExchangeAPI):
    """StopNCII, with withdrawn and deleted hashes as removals: the library's ``fetch_iter``
    compares the hash value (not its status) with Withdrawn/Deleted, so it never removes."""

    def fetch_iter(
        self, _supported_signal_types: Any, checkpoint: StopNCIICheckpoint | None
    ) -> Iterator[fetch_state.FetchDelta[Any, Any, Any]]:
        start = checkpoint.update_time if checkpoint is not None else None
        gone = (stopncii_api.StopNCIICaseStatus.Withdrawn, stopncii_api.StopNCIICaseStatus.Deleted)
        for result in self.api.fetch_hashes_iter(
            start_timestamp=start or stopncii_api.StopNCIIAPI.DEFAULT_START_TIME
        ):
            updates: dict[tuple[str, str], StopNCIISignalMetadata | None] = {}
            for record in result.hashRecords:
                kind = record.signalType.value
                updates[kind, record.hashValue] = (
                    None
                    if record.hashStatus in gone
                    else StopNCIISignalMetadata(record.CSPFeedbacks)
                )
            yield fetch_state.FetchDelta(updates, StopNCIICheckpoint.from_stopncii_fetch(result))

    @classmethod
    def naive_convert_to_signal_type(
        cls, signal_types: Any, collab: Any, fetched: Any
    ) -> dict[Any, dict[str, Any]]:
        return {
            PdqSignal: {
                value: meta for (kind, value), meta in fetched.items() if kind == "ImagePDQ"
            }
        }


class LibraryExchangeFeed:
    """One synced bank's exchange, through the library's API object."""

    def __init__(self, api: SignalExchangeAPI[Any, Any, Any, Any, Any], name: str) -> None:
        self.api = api
        self.name = name

    def fetch(self, checkpoint: bytes | None) -> Iterator[ExchangeDelta]:
        start = pickle.loads(checkpoint) if checkpoint else None  # noqa: S301 (our own rows)
        try:
            for delta in self.api.fetch_iter([PdqSignal], start):
                yield self._delta(delta)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403) or _graph_auth_error(exc.response):
                raise ExchangeAuthError(
                    f"exchange {self.name}: credentials refused (HTTP {status})"
                ) from None
            if status >= 500 or status == 429:
                raise ExchangeUnavailable(f"exchange {self.name}: HTTP {status}") from None
            raise ExchangeError(f"exchange {self.name}: HTTP {status}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ExchangeUnavailable(f"exchange {self.name}: {type(exc).__name__}") from None
        except (ExchangeError, ExchangeUnavailable):
            raise
        except Exception as exc:  # the library raises bare exceptions (bad config, parse errors)
            if "401" in str(exc) or "403" in str(exc):
                raise ExchangeAuthError(f"exchange {self.name}: credentials refused") from None
            raise ExchangeError(f"exchange {self.name}: {exc}") from None

    def _delta(self, delta: fetch_state.FetchDelta[Any, Any, Any]) -> ExchangeDelta:
        api = type(self.api)
        additions: dict[str, list[str]] = {}
        removals: list[str] = []
        ignored = 0
        collab = getattr(self.api, "collab", None)
        for key, value in delta.updates.items():
            merged = api.fetch_value_merge(None, value) if value is not None else None
            name = repr(key)
            if merged is None:
                removals.append(name)
                continue
            converted = api.naive_convert_to_signal_type([PdqSignal], collab, {key: merged})
            hashes = sorted(converted.get(PdqSignal, {}))
            if not hashes:
                ignored += 1  # another signal type (video MD5, PhotoDNA, ...), or filtered
                removals.append(name)  # a record that no longer carries a PDQ hash
                continue
            additions[name] = [h.lower() for h in hashes]
        return ExchangeDelta(
            additions=additions,
            removals=removals,
            ignored=ignored,
            checkpoint=pickle.dumps(delta.checkpoint),
        )


def open_exchange_feed(name: str, settings: ExchangeSyncSettings) -> LibraryExchangeFeed:
    """The feed of one synced bank (``banks.exchanges.<name>``).

    Raises:
        ConfigurationError: a missing credential or collaboration id.
    """
    from moderation.exceptions import ConfigurationError

    secret = settings.credentials.get_secret_value() if settings.credentials else ""
    if not secret:
        raise ConfigurationError(f"banks.exchanges.{name}: credentials are not set")
    api: SignalExchangeAPI[Any, Any, Any, Any, Any]
    if settings.kind == "ncmec":
        user, _, password = secret.partition(":")
        env = ncmec_api.NCMECEnvironment[settings.environment or "Industry"]
        ncmec = _NCMEC(NCMECCollabConfig(name=name, environment=env), user, password)
        ncmec.base_url = settings.url
        api = ncmec
    elif settings.kind == "threatexchange":
        if not settings.collaboration:
            raise ConfigurationError(f"banks.exchanges.{name}: collaboration (privacy group)")
        client = te_api.ThreatExchangeAPI(
            secret, endpoint_override=settings.url.rstrip("/") or None
        )
        collab = FBThreatExchangeCollabConfig(name=name, privacy_group=int(settings.collaboration))
        api = FBThreatExchangeSignalExchangeAPI(client, collab)
    else:  # stopncii: "subscription key:fetch function key"
        key, _, function_key = secret.partition(":")
        sclient = stopncii_api.StopNCIIAPI(
            key, function_key, base_url_override=settings.url.rstrip("/") or None
        )
        api = _StopNCII(CollaborationConfigWithDefaults(name=name, api="stop_ncii"), sclient)
    return LibraryExchangeFeed(api, name)
