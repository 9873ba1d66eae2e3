r"""The hash-bank signal (``signal: hash_bank``): known-bad images by PDQ perceptual hash.

Zero-shot prompts find *new* content that looks like a category; a bank finds *known* content
that someone (a trust-and-safety team, a hash-sharing programme) has already identified. A
policy category backed by a bank::

    - id: known_terror
      signal: hash_bank
      bank: {name: gifct-tvec, max_distance: 31, min_quality: 50}
      thresholds: {review: 0.5, block: 0.85}

scores, for an image whose PDQ hash ``h`` has quality ``q``::

    score = 1 − d / 256    d = min Hamming distance from h to a live entry of the bank,
                               if d ≤ max_distance and q ≥ min_quality
    score = 0              otherwise (no entry that close, or a hash too unreliable to match)

so a match at PDQ's usual 31 bits scores 0.879 and an exact copy 1.0; the thresholds above block
every match (``block: 0.95`` would block matches within 12 bits and review the rest). Its
evidence names the bank, the entry (label, source, date added, reference id), the distance and
the quality, and meets prompt categories in the same bands and most-severe rule.

Where each part comes from:

* **Hashing**: ``pdqhash`` (Meta's reference C++ PDQ, wrapped); bit order and hex as
  ThreatExchange writes them. The frame is hashed at a short side in ``[256, 512)`` (integer
  box reduction of the decoded frame; smaller images as they are). A frame with a uniform border
  (a frame, letterboxing) is hashed a second time without it, and either hash may match.
* **Signal constants and validation**: ``threatexchange``'s ``PdqSignal`` (name ``pdq``,
  ``HASH_PDQ``, the quality threshold 50 below which ThreatExchange does not match, hex
  validation) and its PDQ match threshold (31).
* **Search**: ``faiss`` ``IndexBinaryFlat`` (exact, brute force) for banks up to
  ``flat_max`` hashes and for the recently added rows of any bank; bigger banks use
  :class:`MultiIndex`, an exact multi-index hashing table built with numpy (see its docstring
  for why faiss's ``IndexBinaryMultiHash``, which ``threatexchange``'s ``PDQIndex`` wraps, does not
  fit 10 million hashes in 1 GB). Both return exactly the brute-force matches.

Modules, as ThreatExchange splits its PDQ signal type: :mod:`.pdq_hasher` (hashing),
:mod:`.pdq_index` (search, loaded banks) and :mod:`.signal` (the signal and its scorer).

A process matches against :class:`LoadedBanks`, which the bank synchroniser
(:mod:`moderation.pipeline.banks`) keeps current: it swaps a whole new :class:`BankIndex` in when
a bank changes, so a query always sees one consistent version.
"""

from moderation.signals.hash_bank.pdq_hasher import (
    HASH_BYTES,
    MATCH_THRESHOLD,
    PDQ_SIDE,
    QUALITY_THRESHOLD,
    HashArray,
    PdqFeature,
    hash_frame,
    parse_pdq,
    pdq_bytes,
    pdq_hex,
)
from moderation.signals.hash_bank.pdq_index import (
    DEFAULT_FLAT_MAX,
    BankIndex,
    EntryLookup,
    FlatIndex,
    LoadedBanks,
    Match,
    MultiIndex,
    build_index,
)
from moderation.signals.hash_bank.signal import HashBankScorer, HashBankSignal

__all__ = [
    "DEFAULT_FLAT_MAX",
    "HASH_BYTES",
    "MATCH_THRESHOLD",
    "PDQ_SIDE",
    "QUALITY_THRESHOLD",
    "BankIndex",
    "EntryLookup",
    "FlatIndex",
    "HashArray",
    "HashBankScorer",
    "HashBankSignal",
    "LoadedBanks",
    "Match",
    "MultiIndex",
    "PdqFeature",
    "build_index",
    "hash_frame",
    "parse_pdq",
    "pdq_bytes",
    "pdq_hex",
]
