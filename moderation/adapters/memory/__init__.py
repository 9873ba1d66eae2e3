"""In-memory twins of the ports, for fast unit tests of the use cases (no servers), one twin
per module.

Each twin keeps the contract of its port that the use cases rely on (a final result is written
once, review submission is idempotent, a lease is exclusive, ...) with plain dicts under a lock.
They are not for production: nothing survives the process.
"""

from moderation.adapters.memory.appeals import MemoryAppealStore
from moderation.adapters.memory.audit import MemoryAuditSink
from moderation.adapters.memory.bank_guard import MemoryEntryGuard
from moderation.adapters.memory.banks import MemoryBankStore
from moderation.adapters.memory.blobs import MemoryBlobStore
from moderation.adapters.memory.callback_outbox import MemoryCallbackOutbox
from moderation.adapters.memory.callbacks import MemoryCallbacks
from moderation.adapters.memory.classifier import MemoryClassifier
from moderation.adapters.memory.deliveries import MemoryDeliveryLog
from moderation.adapters.memory.exchange_feed import MemoryExchangeFeed
from moderation.adapters.memory.exchange_sync import MemoryExchangeSync
from moderation.adapters.memory.history import MemoryHistoryFormat
from moderation.adapters.memory.image_history import MemoryImageHistory
from moderation.adapters.memory.jobs import MemoryJobStore
from moderation.adapters.memory.legacy_state import MemoryLegacyState
from moderation.adapters.memory.limits import MemoryRateLimiter
from moderation.adapters.memory.login_throttle import MemoryLoginThrottle
from moderation.adapters.memory.notices import MemoryNoticeStore
from moderation.adapters.memory.policy_files import MemoryPolicyFiles
from moderation.adapters.memory.policy_store import MemoryPolicyStore
from moderation.adapters.memory.publisher import MemoryPublisher
from moderation.adapters.memory.review import MemoryReviewQueue
from moderation.adapters.memory.reviewers import MemoryReviewerStore
from moderation.adapters.memory.segments import MemorySegmentStore
from moderation.adapters.memory.sessions import MemoryReviewerSessions
from moderation.adapters.memory.sources import MemorySource
from moderation.adapters.memory.state_import import MemoryStateImport
from moderation.adapters.memory.strikes import MemoryStrikeStore
from moderation.adapters.memory.transients import MemoryJobTransients
from moderation.adapters.memory.wellbeing import MemoryWellbeingStore
from moderation.adapters.memory.workers import MemoryWorkerRegistry

__all__ = [
    "MemoryAppealStore",
    "MemoryAuditSink",
    "MemoryBankStore",
    "MemoryBlobStore",
    "MemoryCallbackOutbox",
    "MemoryCallbacks",
    "MemoryClassifier",
    "MemoryDeliveryLog",
    "MemoryEntryGuard",
    "MemoryExchangeFeed",
    "MemoryExchangeSync",
    "MemoryHistoryFormat",
    "MemoryImageHistory",
    "MemoryJobStore",
    "MemoryJobTransients",
    "MemoryLegacyState",
    "MemoryLoginThrottle",
    "MemoryNoticeStore",
    "MemoryPolicyFiles",
    "MemoryPolicyStore",
    "MemoryPublisher",
    "MemoryRateLimiter",
    "MemoryReviewQueue",
    "MemoryReviewerSessions",
    "MemoryReviewerStore",
    "MemorySegmentStore",
    "MemorySource",
    "MemoryStateImport",
    "MemoryStrikeStore",
    "MemoryWellbeingStore",
    "MemoryWorkerRegistry",
]
