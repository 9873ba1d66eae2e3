"""Embedding-history shards as Parquet files (:class:`~moderation.ports.HistoryFormat`).

Why Parquet: columnar, compressed, self-describing, one file per object (no server), written
and read in one call by pyarrow, and readable as is by the tools operators already have for a
bucket of files (DuckDB, Athena, Spark, pandas), with the ``date=``/``hour=`` key segments as
partition columns. One shard is one row group.

Columns (one row per decided job)::

    at              timestamp[ms, UTC]    when the job was decided
    tenant          dictionary<string>    the submitting tenant (filters a per-tenant backtest)
    job_id          string                scoped id (tenant/id)
    model_id        dictionary<string>    the model that produced the embeddings
    frames          int32                 frames of the item (1 for a still image)
    embedding       binary                frames x dim float16 values (little-endian, row-major,
                                          L2-normalized); dim in the file metadata
    policies        dictionary<string>    requested policy ids joined by "," ("" = default set)
    decision        dictionary<string>    the live decision then
    deciding        dictionary<string>    the deciding policy/category then (null: none)
    versions        dictionary<string>    the live policy versions then (compact JSON)
    content_sha256  fixed_size_binary[32] the image bytes' hash (null: unknown)
    image           string                the image reference (for the report's examples)

The embeddings stay float16, as raw bytes: Parquet's own FLOAT16 type (a 2-byte fixed-length
array per value) decodes far slower in pyarrow (measured once: 260-330 ms against 11-16 ms for a
shard of 10,000 ViT-B-32 embeddings) and stores no fewer bytes. The low-cardinality columns are
dictionary encoded and cost a few bits a row, and are read back through their dictionaries.
``bench/backtest.py`` measures bytes per stored embedding. The file's metadata carries
``moderation.history`` = :data:`FORMAT_VERSION` and ``moderation.dim``; a reader refuses other
versions.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from moderation.core.embeddings import HistoryBatch
from moderation.exceptions import HistoryShardUnreadable

__all__ = ["FORMAT_VERSION", "SCHEMA", "ParquetHistory"]

#: The shard layout this code writes and reads.
FORMAT_VERSION = "1"
_TEXT = pa.dictionary(pa.int32(), pa.string())
SCHEMA = pa.schema(
    [
        pa.field("at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("tenant", _TEXT, nullable=False),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("model_id", _TEXT, nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("embedding", pa.binary(), nullable=False),
        pa.field("policies", _TEXT, nullable=False),
        pa.field("decision", _TEXT, nullable=False),
        pa.field("deciding", _TEXT),
        pa.field("versions", _TEXT, nullable=False),
        pa.field("content_sha256", pa.binary(32)),
        pa.field("image", pa.string()),
    ],
    metadata={"moderation.history": FORMAT_VERSION},
)


class ParquetHistory:
    """Encodes and decodes :class:`~moderation.core.embeddings.HistoryBatch` as Parquet."""

    suffix = ".parquet"

    def __init__(self, *, compression: str = "zstd", level: int = 3) -> None:
        self.compression = compression
        self.level = level

    def encode(self, batch: HistoryBatch) -> bytes:
        n = len(batch)
        flat = np.ascontiguousarray(batch.embeddings, dtype="<f2").reshape(-1)
        row_bytes = batch.frames.astype(np.int64) * batch.dim * 2
        offsets = np.concatenate([[0], np.cumsum(row_bytes)]).astype(np.int32)
        embedding = pa.BinaryArray.from_buffers(
            pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(flat.view(np.uint8))]
        )
        digests = [bytes.fromhex(h) if h else None for h in batch.content_sha256]
        at = pa.array((batch.at * 1000).round().astype(np.int64), pa.int64())
        table = pa.Table.from_arrays(
            [
                at.cast(SCHEMA.field("at").type),
                pa.array(batch.tenants, pa.string()).dictionary_encode(),
                pa.array(batch.job_ids, pa.string()),
                pa.array(batch.model_ids, pa.string()).dictionary_encode(),
                pa.array(batch.frames, pa.int32()),
                embedding,
                pa.array(batch.policies, pa.string()).dictionary_encode(),
                pa.array(batch.decisions, pa.string()).dictionary_encode(),
                pa.array(batch.deciding, pa.string()).dictionary_encode(),
                pa.array(batch.versions, pa.string()).dictionary_encode(),
                pa.array(digests, pa.binary(32)),
                pa.array(batch.images, pa.string()),
            ],
            schema=SCHEMA.with_metadata(
                {"moderation.history": FORMAT_VERSION, "moderation.dim": str(batch.dim)}
            ),
        )
        sink = io.BytesIO()
        pq.write_table(
            table,
            sink,
            compression=self.compression,
            compression_level=self.level,
            row_group_size=max(n, 1),
            write_statistics=["at", "tenant"],
        )
        return sink.getvalue()

    def decode(self, data: bytes, *, tenant: str | None = None) -> HistoryBatch:
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise HistoryShardUnreadable(f"not a readable Parquet shard: {exc}") from exc
        meta = table.schema.metadata or {}
        version = meta.get(b"moderation.history")
        if version != FORMAT_VERSION.encode():
            raise HistoryShardUnreadable(
                f"not an embedding-history shard of format {FORMAT_VERSION} "
                f"(format: {version.decode(errors='replace') if version else 'none'})"
            )
        try:
            dim = int(meta.get(b"moderation.dim", b"0"))
            if tenant is not None:
                table = table.filter(pc.equal(table["tenant"].cast(pa.string()), tenant))
            return _batch(table.combine_chunks(), dim)
        except (pa.ArrowException, KeyError, ValueError, TypeError) as exc:
            raise HistoryShardUnreadable(f"unreadable shard columns: {exc}") from exc


def _chunk(table: pa.Table, name: str) -> pa.Array:
    column = table[name]
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _codes(table: pa.Table, name: str) -> list[str | None]:
    """A dictionary column's values, through its dictionary (one Python string per distinct
    value, not per row)."""
    column = _chunk(table, name)
    if not pa.types.is_dictionary(column.type):
        values: list[str | None] = column.to_pylist()
        return values
    names = [*column.dictionary.to_pylist(), None]
    indices = pc.fill_null(column.indices, len(names) - 1).to_numpy(zero_copy_only=False)
    return [names[i] for i in indices.tolist()]


def _texts(table: pa.Table, name: str) -> list[str]:
    if table[name].null_count:
        raise ValueError(f"column {name} has empty cells")
    return _codes(table, name)  # type: ignore[return-value]


def _batch(table: pa.Table, dim: int) -> HistoryBatch:
    n = table.num_rows
    frames = _chunk(table, "frames").to_numpy(zero_copy_only=False).astype(np.int32)
    embedding = _chunk(table, "embedding")
    total = int(frames.sum())
    if n == 0:
        matrix = np.zeros((0, dim), np.float16)
    else:
        _, offsets_buf, data_buf = embedding.buffers()
        offsets = np.frombuffer(offsets_buf, np.int32)[embedding.offset : embedding.offset + n + 1]
        lengths = np.diff(offsets)
        if dim <= 0 or not np.array_equal(lengths, frames.astype(np.int64) * dim * 2):
            raise ValueError("embedding sizes do not match the frame counts")
        # A binary column's values lie one after the other: the rows' frames, in order.
        flat = np.frombuffer(data_buf, np.uint8)[offsets[0] : offsets[-1]]
        matrix = flat.view("<f2").reshape(total, dim).astype(np.float16, copy=False)
    at_ms = _chunk(table, "at").cast(pa.int64()).to_numpy(zero_copy_only=False)
    digests = _chunk(table, "content_sha256").to_pylist()
    return HistoryBatch(
        job_ids=_chunk(table, "job_id").to_pylist(),
        tenants=_texts(table, "tenant"),
        at=at_ms.astype(np.float64) / 1000.0,
        model_ids=_texts(table, "model_id"),
        frames=frames,
        embeddings=matrix,
        policies=_texts(table, "policies"),
        decisions=_texts(table, "decision"),
        deciding=_codes(table, "deciding"),
        versions=_texts(table, "versions"),
        content_sha256=[d.hex() if d is not None else None for d in digests],
        images=_chunk(table, "image").to_pylist(),
    )
