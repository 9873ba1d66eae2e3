"""Reading a ``multipart/form-data`` upload as it streams in (``/v1/jobs:upload``).

Starlette's form parser spools every file part to a temporary file and the route then read it
whole. Here each ``image`` file part goes to an :class:`~moderation.pipeline.uploads.
UploadBuffer` chunk by chunk (in memory while small, then on to the object store), so a large
video costs the API a buffer, not its size, in memory or on disk. Other parts (``jobs``,
``policies``, ``callback_url``) are small and kept in memory, within ``max_field_bytes`` in all.
Every buffer is aborted when anything fails (a malformed body, a part over its cap, a client
that disconnects): nothing stays in the object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from moderation.exceptions import JobRejected
from moderation.pipeline.uploads import StoredUpload, UploadBuffer, Uploads

__all__ = ["StreamedForm", "read_upload"]


@dataclass
class StreamedForm:
    """An upload's parts: the images (bytes, or where a large one was stored) in order, and the
    other fields by name."""

    images: list[bytes | StoredUpload] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def stored(self) -> list[StoredUpload]:
        return [i for i in self.images if isinstance(i, StoredUpload)]


@dataclass
class _Part:
    name: str = ""
    buffer: UploadBuffer | None = None
    data: bytearray = field(default_factory=bytearray)


class _Parser:
    def __init__(
        self,
        uploads: Uploads | None,
        *,
        max_inline_bytes: int,
        max_files: int,
        max_fields: int,
        max_field_bytes: int,
    ):
        self.uploads = uploads
        self.max_inline_bytes = max_inline_bytes
        self.max_files = max_files
        self.max_fields = max_fields
        self.max_field_bytes = max_field_bytes
        self.field_bytes = 0
        self.files = 0
        self.fields = 0
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.pending: list[tuple[UploadBuffer, bytes]] = []
        self.images: list[UploadBuffer] = []
        self.values: dict[str, list[str]] = {}

    # python-multipart's callbacks (synchronous: image bytes are queued in ``pending`` and
    # written by :func:`read_upload` between reads, off the event loop)

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name")
        if name is None:
            raise _bad("a part has no name in its Content-Disposition header")
        self.part.name = name.decode("utf-8", "replace")
        if b"filename" in options and self.part.name == "image":
            self.files += 1
            if self.files > self.max_files:
                raise JobRejected(
                    f"more than {self.max_files} image parts", status=413, code="batch_too_large"
                )
            self.part.buffer = (
                self.uploads.buffer()
                if self.uploads is not None
                else UploadBuffer(
                    None, memory_bytes=self.max_inline_bytes, max_bytes=self.max_inline_bytes
                )
            )
            self.images.append(self.part.buffer)
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise _bad(f"more than {self.max_fields} form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.buffer is not None:
            self.pending.append((self.part.buffer, chunk))
            return
        self.field_bytes += len(chunk)
        if self.field_bytes > self.max_field_bytes:
            raise JobRejected(
                f"the form fields other than images exceed {self.max_field_bytes} bytes",
                status=413,
                code="request_too_large",
            )
        self.part.data += chunk

    def on_part_end(self) -> None:
        if self.part.buffer is None:
            value = bytes(self.part.data).decode("utf-8", "replace")
            self.values.setdefault(self.part.name, []).append(value)


def _bad(message: str) -> JobRejected:
    return JobRejected(f"malformed multipart body: {message}", code="bad_multipart")


async def read_upload(
    request: Request,
    uploads: Uploads | None,
    *,
    max_inline_bytes: int,
    max_files: int,
    max_fields: int,
    max_field_bytes: int,
    max_memory_bytes: int | None = None,
) -> StreamedForm:
    """The parts of ``request``'s multipart body, large images streamed to the object store
    (``uploads``; None: every image is kept in memory, within ``max_inline_bytes``).
    ``max_memory_bytes``: the most image bytes one request may hold in memory in all (the
    parts small enough not to stream); None: ``max_inline_bytes`` x the parts allowed.

    Raises:
        JobRejected: 400 ``bad_multipart`` (malformed), 413 ``video_upload_too_large`` (an
            image part over ``video.max_upload_bytes``), 413 ``batch_too_large`` /
            ``request_too_large`` (too many parts, fields too large, small parts over
            ``max_memory_bytes`` together). Nothing stays stored.
        ClientDisconnect: the client went away (nothing stays stored).
        BlobStoreUnavailable, BlobError: the object store refused a part (nothing stays).
    """
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise _bad("no boundary in the Content-Type header")
    memory_budget = (
        max_memory_bytes if max_memory_bytes is not None else max_inline_bytes * max_files
    )
    state = _Parser(
        uploads,
        max_inline_bytes=max_inline_bytes,
        max_files=max_files,
        max_fields=max_fields,
        max_field_bytes=max_field_bytes,
    )
    parser = python_multipart.MultipartParser(
        boundary,
        {
            "on_part_begin": state.on_part_begin,
            "on_part_data": state.on_part_data,
            "on_part_end": state.on_part_end,
            "on_header_field": state.on_header_field,
            "on_header_value": state.on_header_value,
            "on_header_end": state.on_header_end,
            "on_headers_finished": state.on_headers_finished,
        },
    )
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise _bad(str(exc)[:200]) from None
            for buffer, data in state.pending:
                if buffer.streamed or buffer.size + len(data) > buffer.memory_bytes:
                    await run_in_threadpool(buffer.write, data)
                else:
                    buffer.write(data)
            state.pending.clear()
            held = sum(b.size for b in state.images if not b.streamed)
            if held > memory_budget:
                raise JobRejected(
                    f"the upload's image parts hold more than {memory_budget} bytes in memory "
                    "(parts too small to be streamed count together, as a batch's inline "
                    "images do)",
                    status=413,
                    code="batch_too_large",
                )
        try:
            parser.finalize()
        except FormParserError as exc:
            raise _bad(str(exc)[:200]) from None
        images = [await run_in_threadpool(buffer.finish) for buffer in state.images]
    except BaseException:
        for buffer in state.images:
            await run_in_threadpool(buffer.abort)
        raise
    return StreamedForm(images=images, fields=state.values)
