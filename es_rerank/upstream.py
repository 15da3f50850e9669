"""The HTTP client pool to OpenSearch, shared by pass-through and search calls."""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from typing import Iterable

import aiohttp
from yarl import URL

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

    aiohttp rather than httpx: on loopback it adds about 0.7 ms less per request,
    which is most of the proxy's pass-through budget. A ``session`` can be passed
    in (tests, custom TLS); otherwise one is made on first use, inside the loop.
    """

    def __init__(self, settings: UpstreamSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self.base_url = settings.url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout, sock_connect=settings.connect_timeout)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.settings.max_connections,
                    ssl=None if self.settings.verify_certs else False,
                ),
                timeout=self._timeout,
                # Send only what the client sent and relay bytes as they come.
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
                auto_decompress=False,
            )
        return self._session

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
        target = (raw_path + (b"?" + query if query else b"")).decode("latin-1")
        url = URL(self.base_url + target, encoded=True)
        try:
            async with self._get_session().request(
                method, url, headers=headers, data=content or None, allow_redirects=False
            ) as response:
                body = await response.read()
                status = response.status
                out_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            if isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())):
                raise UpstreamUnavailableError(
                    f"OpenSearch did not accept a connection within {self.settings.connect_timeout}s"
                ) from None
            raise UpstreamTimeoutError(f"OpenSearch did not answer within {self.settings.timeout}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailableError(f"OpenSearch is unavailable: {type(exc).__name__}") from None
        if decode:
            encoding = next((v.lower() for k, v in out_headers if k.lower() == "content-encoding"), "")
            if encoding in ("gzip", "deflate"):
                body = zlib.decompress(body, wbits=47)  # 47: gzip or zlib header, detected
            # The body is now decoded: its old encoding and length no longer apply.
            out_headers = [
                (k, v) for k, v in out_headers if k.lower() not in ("content-encoding", "content-length")
            ]
        return UpstreamResponse(status=status, headers=out_headers, content=body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
