"""``evidence:<key>``: a review export names the scored bytes kept in the object store, never a
tenant: the source is not public, stays inside the evidence folder and checks the bytes' hash."""

from __future__ import annotations

import hashlib

import pytest

from moderation.adapters.memory import MemoryBlobStore
from moderation.core.image_ref import ImageRef
from moderation.exceptions import ImageFetchError, UrlRefusedError
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.pipeline.sources import EvidenceSource, ImageSources


def test_the_evidence_source_reads_checked_evidence_only() -> None:
    blobs = MemoryBlobStore()
    data = b"scored bytes"
    digest = hashlib.sha256(data).hexdigest()
    key = ReviewEvidence(blobs, retention_s=60).keep(
        tenant="acme", review_id="r1", content_sha256=digest, data=data
    )
    source = EvidenceSource(blobs)
    assert source.fetch(ImageRef(uri=f"evidence:{key}"), tenant=None) == data

    blobs.put(key, b"tampered")
    with pytest.raises(ImageFetchError) as bad:
        source.fetch(ImageRef(uri=f"evidence:{key}"), tenant=None)
    assert bad.value.code == "evidence_mismatch"
    blobs.delete(key)
    with pytest.raises(ImageFetchError) as gone:
        source.fetch(ImageRef(uri=f"evidence:{key}"), tenant=None)
    assert gone.value.code == "evidence_expired"
    for outside in ("evidence:spill/x", "evidence:../review-evidence/a", "evidence:audit/seg"):
        with pytest.raises(ImageFetchError) as refused:
            source.fetch(ImageRef(uri=outside), tenant=None)
        assert refused.value.code == "bad_reference"
    # A tenant cannot name one in a job: the scheme is not public.
    with pytest.raises(UrlRefusedError):
        ImageSources([source]).check(ImageRef(uri=f"evidence:{key}"), tenant="acme")
