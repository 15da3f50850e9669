"""The HTTP client pool to OpenSearch, shared by pass-through and search calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import httpx

from .config import UpstreamSettings
from .errors import UpstreamTimeoutError, UpstreamUnavailableError

__all__ = ["Upstream", "UpstreamResponse", "HOP_BY_HOP", "forwardable_headers", "response_headers"]

# RFC 9110 section 7.6.1 hop-by-hop headers, plus the ones the client library
# recomputes for the new connection (host, content-length).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_RECOMPUTED = frozenset({"host", "content-length"})


def _without(headers: Iterable[tuple[str, str]], skip: frozenset[str]) -> list[tuple[str, str]]:
    headers = list(headers)
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == "connection"
        for token in value.split(",")
    }
    skip = skip | named
    return [(k, v) for k, v in headers if k.lower() not in skip]


def forwardable_headers(
    headers: Iterable[tuple[str, str]], *, drop: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Request headers to send on: minus hop-by-hop ones, host and content-length."""
    return _without(headers, HOP_BY_HOP | _RECOMPUTED | drop)


def response_headers(
    headers: Iterable[tuple[str, str]], *, drop: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Response headers to answer with: minus hop-by-hop ones (content-length kept,
    since a HEAD answer's length is that of the GET it stands for)."""
    return _without(headers, HOP_BY_HOP | drop)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    content: bytes


class Upstream:
    """Sends requests to OpenSearch; transport errors become es-rerank errors.

    A ``transport`` can be passed in (``httpx.MockTransport`` in unit tests).
    """

    def __init__(
        self, settings: UpstreamSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.base_url = settings.url.rstrip("/")
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            verify=settings.verify_certs,
            follow_redirects=False,
        )
        # Send only what the client sent: no default Accept, Accept-Encoding or
        # User-Agent of the client library, so pass-through is what the client asked.
        for name in ("accept", "accept-encoding", "user-agent"):
            self._client.headers.pop(name, None)
        self._base = httpx.URL(self.base_url)
        self._base_path = self._base.raw_path.rstrip(b"/")

    async def request(
        self,
        method: str,
        raw_path: bytes,
        query: bytes = b"",
        *,
        headers: list[tuple[str, str]] | None = None,
        content: bytes | None = None,
        decode: bool = False,
    ) -> UpstreamResponse:
        """One request; ``raw_path`` and ``query`` are sent as received (still encoded).

        With ``decode`` the body comes back decompressed (for the proxy to parse);
        without it, byte for byte as OpenSearch sent it (for pass-through).
        """
        target = self._base_path + raw_path + (b"?" + query if query else b"")
        url = self._base.copy_with(raw_path=target)
        try:
            request = self._client.build_request(method, url, headers=headers, content=content or None)
            response = await self._client.send(request, stream=True)
            try:
                if decode:
                    body = await response.aread()
                else:
                    body = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise UpstreamUnavailableError(
                    f"OpenSearch did not accept a connection within {self.settings.connect_timeout}s"
                ) from None
            raise UpstreamTimeoutError(
                f"OpenSearch did not answer within {self.settings.timeout}s"
            ) from None
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(
                f"OpenSearch is unavailable: {type(exc).__name__}"
            ) from None
        out_headers = list(response.headers.multi_items())
        if decode:
            # The body is now decoded: its old encoding and length no longer apply.
            out_headers = [
                (k, v)
                for k, v in out_headers
                if k.lower() not in ("content-encoding", "content-length")
            ]
        return UpstreamResponse(status=response.status_code, headers=out_headers, content=body)

    async def aclose(self) -> None:
        await self._client.aclose()
