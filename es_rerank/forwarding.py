"""The client's request on its way to OpenSearch, as it came or rewritten by the proxy.

:class:`ClientRequest` is what the flows need of an HTTP request, read once by the
app (so the flows do not depend on the ASGI server's request type). :class:`Forwarder`
sends it on: untouched (pass-through), or with a body of the proxy's making that
keeps the client's other headers and its Content-Type, so OpenSearch judges the
request as it would direct.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from .bodies import TooDeep, UnreadableBody, check_depth, decode_content, dumps, is_json_media_type, loads_request
from .errors import BodyTooDeepError
from .plan import SearchPlan
from .responses import marks, relay
from .scoring import Outcome
from .upstream import Transport, UpstreamResponse, forwardable_headers

__all__ = ["ClientRequest", "Forwarder", "OTHER_FORMATS"]

# Answers OpenSearch writes in another format than JSON: passed through, not rebuilt.
OTHER_FORMATS = ("yaml", "cbor", "smile")
# Headers that describe the client's body, replaced when the proxy sends a body of its own.
_BODY_HEADERS = frozenset({"content-type", "content-encoding", "accept-encoding"})


@dataclass(frozen=True)
class ClientRequest:
    """One client request: the target as sent (still encoded), headers, the whole body."""

    method: str
    raw_path: bytes
    query: bytes
    headers: Sequence[tuple[str, str]]
    body: bytes
    params: list[tuple[str, str]] = field(default_factory=list)
    # Completes when the client disconnects (an awaitable made on demand).
    disconnected: Callable[[], Awaitable[None]] | None = None
    address: str | None = None  # the client's IP address (whose newest search wins: supersession)
    # decoded_body's result by limit: the app checks the depth as the request comes in, the
    # flow then reads the same body; a gzip body is inflated and scanned once, not twice.
    _decoded: dict[int, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), default)

    def header_list(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def other_format(self) -> str | None:
        """Why OpenSearch would answer in a format other than JSON, if it would."""
        fmt = next((v.lower() for k, v in reversed(self.params) if k == "format"), None)
        if fmt is not None and fmt != "json":
            return "format"
        accept = self.header("accept").lower()
        return "accept" if any(f in accept for f in OTHER_FORMATS) else None

    def decoded_body(self, limit: int) -> bytes:
        """The body with its Content-Encoding undone; refused when it nests too deep
        (:class:`~es_rerank.errors.BodyTooDeepError`); :class:`UnreadableBody` when it does not decode."""
        if limit in self._decoded:
            return self._decoded[limit]
        encodings = self.header_list("content-encoding")
        content = decode_content(self.body, encodings, limit=limit) if encodings else self.body
        try:
            check_depth(content)
        except TooDeep as exc:
            raise BodyTooDeepError(str(exc)) from None
        self._decoded[limit] = content
        return content

    def json_body(self, limit: int) -> tuple[Any, str | None]:
        """The body as OpenSearch would read it (``{}`` when there is none), or None and
        the reason it is left to OpenSearch."""
        if not self.body:
            return {}, None
        if not is_json_media_type(self.header("content-type")):
            return None, "content_type"  # OpenSearch answers 406 itself
        try:
            parsed = loads_request(self.decoded_body(limit))
        except UnreadableBody:
            return None, "unparsed_body"  # OpenSearch answers with its own error
        if not isinstance(parsed, dict):
            return None, "unparsed_body"  # null, a list, a number: OpenSearch's parsing_exception
        return parsed, None


class Forwarder:
    """Sends client requests to OpenSearch through ``upstream`` and relays the answers."""

    def __init__(self, upstream: Transport) -> None:
        self.upstream = upstream

    async def passthrough(self, request: ClientRequest, extra: Sequence[tuple[str, str]] = ()) -> Response:
        """The client's request as it came (less hop-by-hop headers), OpenSearch's answer as it came."""
        answer = await self.upstream.request(
            request.method,
            request.raw_path,
            request.query,
            headers=forwardable_headers(request.headers),
            content=request.body,
        )
        return relay(answer, extra)

    async def send(
        self, request: ClientRequest, method: str, query: bytes, content: bytes, *, decode: bool = False
    ) -> UpstreamResponse:
        """A body of the proxy's making, with the client's other headers and its Content-Type, uncompressed."""
        headers = forwardable_headers(request.headers, drop=_BODY_HEADERS)
        content_type = request.header("content-type") or "application/json"
        return await self.upstream.request(
            method,
            request.raw_path,
            query,
            headers=[*headers, ("content-type", content_type)],
            content=content,
            decode=decode,
        )

    async def forward_plan(
        self, request: ClientRequest, parsed: Mapping[str, Any], plan: SearchPlan, outcome: Outcome = Outcome.SKIPPED
    ) -> Response:
        """A search not reranked: the client's bytes when nothing of ours was in them,
        else its body less ``ext.rerank``; OpenSearch's answer as it is, marked ``outcome``."""
        mark = marks(outcome, plan.reason)
        if plan.body == parsed:
            return await self.passthrough(request, mark)
        answer = await self.send(request, request.method, request.query, dumps(plan.body))
        return relay(answer, mark)
