"""What every translating stream codec shares: the `StreamCodec` bookkeeping, the OpenAI chunk encoder, and how a
translated stream starts, ends and fails.

A translated stream starts (`started`) with the first event that gives the client something: a provider's
preamble (Anthropic `message_start`, Bedrock `messageStart`, pings) is held, so an error that follows it is still a
*first* error and the attempt can be retried. The role chunk goes out just before the first content.

It ends with `[DONE]` when the provider's own end arrives (or, for providers without an end event, at EOF after a
finish reason). A mid-stream error event becomes one OpenAI error event and no `[DONE]`; a body that ends before
the provider's end becomes an `upstream_truncated` error event, never a `[DONE]` that would pass a cut answer off
as complete. After the end or an error the rest of the body is ignored.
"""

from __future__ import annotations

import contextlib
from typing import Final

from sluicegate.providers.base import UpstreamEventError, Usage
from sluicegate.providers.openai_chunks import DONE, ChunkEncoder, UsageCounts, error_event
from sluicegate.types import GatewayRequest
from sluicegate.wire.errors import WireError

TRUNCATED: Final = "upstream_truncated"


def event_error_status(kind: str | None, status_hint: int | None = None) -> int:
    """The status a client gets when an error event is the first event (rate limits 429, overload 503)."""
    text = (kind or "").lower()
    if status_hint == 429 or "rate" in text or "throttl" in text or "exhausted" in text:
        return 429
    if status_hint in (503, 529) or "overload" in text or "unavailable" in text:
        return 503
    if status_hint == 504 or "timeout" in text or "deadline" in text:
        return 504
    return 502


class TranslatingCodec:
    """Base of the provider codecs. Subclasses implement `_translate(data, out)` and `_translate_tail(out)`,
    appending client bytes to `out`, and call `_open`, `_stop`, `_end` and `_fail` as the provider's events say."""

    __slots__ = ("_chunk_id", "_chunks", "_created", "_ended", "_events", "_fallback_id", "_model", "_stopped",
                 "_wants_usage", "counts", "error", "finish_reason", "first_error", "started", "usage")

    provider: str = "provider"

    def __init__(self, req: GatewayRequest) -> None:
        self._chunks: ChunkEncoder | None = None
        self._created = int(req.arrived_wall)
        self._model = req.model
        self._fallback_id = f"chatcmpl-{req.id}"
        self._chunk_id: str | None = None  # the provider's response id, when it has one
        self._wants_usage = req.client_wants_usage
        self._ended = False  # [DONE] or an error event went out: the rest of the body is ignored
        self._stopped = False  # the provider said the answer is complete (a finish reason or its end event)
        self._events = 0
        self.counts = UsageCounts()
        self.started = False
        self.first_error: UpstreamEventError | None = None
        self.error: UpstreamEventError | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    # --- StreamCodec ------------------------------------------------------------------------------------------
    @property
    def events(self) -> int:
        return self._events

    def feed(self, data: bytes) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        self._translate(data, out)
        if not out:
            return b""
        self.started = True
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        with contextlib.suppress(WireError):  # a cut last frame: the stream is incomplete, said below
            self._translate_tail(out)
        if not self._ended:
            if self._stopped:
                self._end(out)
            else:
                self._fail(UpstreamEventError("The upstream stream ended before the provider's final event.",
                                              code=TRUNCATED, type="upstream_error"), out)
        return b"".join(out)

    def error_event(self, code: str, message: str) -> bytes:
        return error_event(message, code, "server_error")

    # --- for subclasses ---------------------------------------------------------------------------------------
    def _translate(self, data: bytes, out: list[bytes]) -> None:
        raise NotImplementedError

    def _translate_tail(self, out: list[bytes]) -> None:
        """At EOF: translate what the frame splitter still holds (may raise WireError for a cut frame)."""

    def _counted(self) -> None:
        """`counts` changed: refresh `usage`, what the gateway records."""
        counts = self.counts
        if counts.prompt is not None or counts.completion is not None:
            self.usage = Usage(counts.prompt, counts.completion)

    def _open(self, out: list[bytes]) -> ChunkEncoder:
        """The chunk encoder, sending the role chunk first if nothing was sent yet."""
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = ChunkEncoder(self._chunk_id or self._fallback_id, self._created, self._model)
            out.append(chunks.role())
        return chunks

    def _stop(self, out: list[bytes], reason: str) -> None:
        """The provider's finish reason (already mapped to OpenAI's): the finish chunk."""
        self.finish_reason = reason
        self._stopped = True
        out.append(self._open(out).finish(reason))

    def _end(self, out: list[bytes]) -> None:
        """The provider's end: the usage chunk if the client asked for it, then [DONE]."""
        chunks = self._open(out)
        if self._wants_usage and (self.counts.prompt is not None or self.counts.completion is not None):
            out.append(chunks.usage(self.counts))
        out.append(DONE)
        self._ended = True

    def _fail(self, error: UpstreamEventError, out: list[bytes]) -> None:
        """An upstream error: the first event (retryable, nothing sent) or one error event and the end."""
        self.error = error
        self._ended = True
        if not self.started and not out:
            self.first_error = error
            self.started = True
            return
        out.append(error_event(error.message, error.code, error.type))
