"""The policies a process serves: compiled, with a scorer per requested subset, hot-swappable.

:class:`CompiledSet` is immutable: one set of compiled policies and the signals that score them,
plus the shadow versions (``mode: shadow``) that are evaluated beside them and never acted on.
:class:`ActivePolicies` holds the set in service and swaps in a new one when the policy files
change (``reload``); readers take ``current`` once per job, so a job is always scored by one
consistent set, and verdicts name the policy versions they used (``Verdict.policies``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence

from moderation.core.compiled import CompiledPolicy, ModelIdentity
from moderation.core.decision import Verdict, verdicts
from moderation.core.policy import Policy, PolicySet
from moderation.core.scoring import FeatureBatch, Scorer
from moderation.exceptions import ModerationError, PolicyError, UnknownPolicyError
from moderation.metrics import metrics
from moderation.signals import Signals

__all__ = ["ActivePolicies", "CompiledSet"]

log = logging.getLogger(__name__)


class CompiledSet:
    """Compiled policies in service; a scorer per requested subset is built once and cached.

    Raises:
        PolicyError: no policies.
        UnknownSignalError: a category names a signal that is not registered.
    """

    def __init__(
        self,
        compiled: Sequence[CompiledPolicy],
        signals: Signals,
        shadows: Sequence[CompiledPolicy] = (),
    ) -> None:
        if not compiled:
            raise PolicyError("no policies to serve", code="policy_none")
        self.signals = signals
        self.by_id = {p.id: p for p in compiled}
        self.default_ids = tuple(p.id for p in compiled if p.policy.active) or tuple(self.by_id)
        #: Shadow versions by policy id: evaluated beside the live ones, never acted on.
        self.shadows = {p.id: p for p in shadows}
        #: The signals that categories of this set (live or shadow) use.
        self.used_signals = frozenset(
            c.signal for p in [*compiled, *shadows] for c in p.policy.categories
        )
        self._scorers: dict[tuple[str, ...], Scorer] = {}
        self._shadow_scorers: dict[str, Scorer] = {}
        self._lock = threading.Lock()
        self.scorer(None)  # every category's signal is checked now, not on the first job
        for policy_id in self.shadows:
            self.shadow_scorer(policy_id)

    @classmethod
    def split(
        cls,
        compiled: Sequence[CompiledPolicy],
        signals: Signals,
        *,
        lone_shadows_live: bool = False,
    ) -> CompiledSet:
        """A set from live and shadow policies together (by each policy's ``mode``).

        ``lone_shadows_live``: a shadow version without a live one is served as live (the
        policy tools evaluate a candidate file whatever its mode).
        """
        live_ids = {p.id for p in compiled if not p.policy.shadow}
        lone = {p.id for p in compiled if p.policy.shadow and p.id not in live_ids}
        promoted = lone if lone_shadows_live else set()
        return cls(
            [p for p in compiled if not p.policy.shadow or p.id in promoted],
            signals,
            [p for p in compiled if p.policy.shadow and p.id not in promoted],
        )

    def replacing(self, candidate: CompiledPolicy) -> CompiledSet:
        """This set with ``candidate`` live in place of the policy of its id (added when new),
        whatever its mode: what the set would be once ``candidate`` is promoted."""
        live = [p for p in self.by_id.values() if p.id != candidate.id]
        return CompiledSet([*live, candidate], self.signals)

    @property
    def shadow_versions(self) -> dict[str, int]:
        return {pid: p.version for pid, p in self.shadows.items()}

    @property
    def versions(self) -> dict[str, int]:
        return {pid: p.version for pid, p in self.by_id.items()}

    @property
    def policies(self) -> dict[str, Policy]:
        return {pid: p.policy for pid, p in self.by_id.items()}

    @property
    def model(self) -> ModelIdentity:
        return next(iter(self.by_id.values())).model

    def ids_for(self, policy_ids: Iterable[str] | None) -> tuple[str, ...]:
        """The policy ids a request names (sorted), or every active one.

        Raises:
            UnknownPolicyError: a named policy is not loaded.
        """
        ids = tuple(sorted(set(policy_ids))) if policy_ids else self.default_ids
        for pid in ids:
            if pid not in self.by_id:
                raise UnknownPolicyError(pid, list(self.by_id))
        return ids

    def scorer(self, policy_ids: Iterable[str] | None) -> Scorer:
        """The scorer of the named policies (default: every active one).

        Raises:
            UnknownPolicyError: a named policy is not loaded.
        """
        ids = self.ids_for(policy_ids)
        with self._lock:
            scorer = self._scorers.get(ids)
            if scorer is None:
                scorer = Scorer(
                    [self.by_id[pid] for pid in ids],
                    self.signals.scorer_factories,
                    suppressor=self.signals.suppressor,
                    costs=self.signals.costs,
                )
                self._scorers[ids] = scorer
            return scorer

    def verdicts(
        self,
        batch: FeatureBatch,
        policy_ids: Iterable[str] | None = None,
        *,
        complete: bool = False,
    ) -> list[Verdict]:
        """One verdict per row of ``batch`` (``complete``: every signal on every row, none
        skipped by cost order: what evaluation measures)."""
        if len(batch) == 0:
            return []
        return verdicts(self.scorer(policy_ids).score(batch, complete=complete))

    def shadow_ids_for(self, policy_ids: Iterable[str] | None) -> tuple[str, ...]:
        """The shadow versions a request is evaluated against: the shadow of each policy it
        applies and, for a request of the default set, every active shadow of a policy that is
        not live yet.

        Raises:
            UnknownPolicyError: a named policy is not loaded.
        """
        if not self.shadows:
            return ()
        applied = set(self.ids_for(policy_ids))
        return tuple(
            sorted(
                pid
                for pid, shadow in self.shadows.items()
                if pid in applied
                or (not policy_ids and pid not in self.by_id and shadow.policy.active)
            )
        )

    def shadow_scorer(self, policy_id: str) -> Scorer:
        """The scorer of one shadow version alone.

        Raises:
            KeyError: no shadow of that policy.
        """
        with self._lock:
            scorer = self._shadow_scorers.get(policy_id)
            if scorer is None:
                scorer = Scorer(
                    [self.shadows[policy_id]],
                    self.signals.scorer_factories,
                    suppressor=self.signals.suppressor,
                    costs=self.signals.costs,
                )
                self._shadow_scorers[policy_id] = scorer
            return scorer

    def shadow_verdicts(self, batch: FeatureBatch, policy_id: str) -> list[Verdict]:
        """One verdict of the shadow version of ``policy_id`` alone per row of ``batch``."""
        if len(batch) == 0:
            return []
        return verdicts(self.shadow_scorer(policy_id).score(batch))


class ActivePolicies:
    """The compiled set in service. Thread-safe: ``current`` is one reference read.

    Args:
        load: reads and validates the policy files.
        compile: compiles a policy set, live and shadow versions (through the compile cache).
        fingerprint: a content hash of the policy files, cheap enough to poll.
        signals: the registered signals.
        lone_shadows_live: serve a shadow version without a live one as live (policy tools).

    Raises:
        PolicyError: the initial policies cannot be loaded or compiled.
    """

    def __init__(
        self,
        *,
        load: Callable[[], PolicySet],
        compile: Callable[[PolicySet], list[CompiledPolicy]],
        fingerprint: Callable[[], str],
        signals: Signals,
        lone_shadows_live: bool = False,
    ) -> None:
        self._load = load
        self._compile = compile
        self._fingerprint = fingerprint
        self.signals = signals
        self.lone_shadows_live = lone_shadows_live
        self.fingerprint = fingerprint()
        self._current = self._build()

    def _build(self) -> CompiledSet:
        return CompiledSet.split(
            self._compile(self._load()), self.signals, lone_shadows_live=self.lone_shadows_live
        )

    @property
    def current(self) -> CompiledSet:
        return self._current

    def reload(self, *, force: bool = False) -> bool:
        """Swap in the current policy files if they changed. Returns whether it swapped.

        A broken policy edit is logged and ignored: the previous set stays in service.
        """
        fingerprint = self._fingerprint()
        if fingerprint == self.fingerprint and not force:
            return False
        try:
            fresh = self._build()
        except ModerationError as exc:
            log.error("policy reload failed, keeping the loaded set: %s", exc)
            self.fingerprint = fingerprint
            return False
        self._current = fresh  # one reference assignment: atomic for readers
        self.fingerprint = fingerprint
        metrics().policy_reloads.inc()
        log.info("policies reloaded: %s (shadow: %s)", fresh.versions, fresh.shadow_versions)
        return True
