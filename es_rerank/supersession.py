"""Search-as-you-type: a client's newest search wins the model over its older ones.

A search box that sends one search per keystroke and never cancels (Searchkit,
InstantSearch) queues "A", "AL", "ALD", ... behind the model; scored oldest first, the
prefixes nobody looks at any more take the model's time and the final query is shed.
Here each search to be reranked takes a :class:`Claim` under its client's key; a newer
claim of the same key supersedes the older ones: an older search not yet scored stops
(its pairs not yet run leave the model's queue) and is answered in first-stage order
with the reason ``superseded``. The newer search waits until the older ones' model work
is withdrawn before it is admitted, so it is never refused on a queue that holds the
searches it replaced.

The client (:func:`client_key`): ``ext.ubi.client_id`` in the body (UBI's own), else the
value of the configured header (``server.supersede.client_header``), else, for a request
from a browser page (it sends ``Origin``), the connection's address with the page's
origin and the index. A request with none of these (a backend serving many users from
one address, a script) is nobody's newer search: never superseded, supersedes nothing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Claim", "Claims", "client_key"]

# Clients remembered at most; a forgotten client's older search is simply not superseded.
MAX_CLIENTS = 10_000


def client_key(
    headers: Mapping[str, str],
    address: str | None,
    bodies: Iterable[Any],
    indices: Iterable[str],
    *,
    header: str | None = None,
) -> str | None:
    """Who sent a search, or None when that is not known well enough to supersede."""
    for body in bodies:
        ubi = body.get("ext", {}).get("ubi") if isinstance(body, dict) and isinstance(body.get("ext"), dict) else None
        if isinstance(ubi, dict) and isinstance(ubi.get("client_id"), str) and ubi["client_id"]:
            return f"ubi:{ubi['client_id']}"
    if header:
        value = headers.get(header.lower()) or headers.get(header)
        if value:
            return f"header:{value}"
    origin = headers.get("origin")
    if origin and address:
        return f"addr:{address} {origin} {','.join(sorted(set(indices)))}"
    return None


class Claim:
    """One search's (or one ``_msearch``'s) hold on its client's turn at the model."""

    __slots__ = ("key", "superseded", "_busy", "_idle")

    def __init__(self, key: str) -> None:
        self.key = key
        self.superseded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._busy = 0  # scorings of this search with model work pending
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def is_superseded(self) -> bool:
        return self.superseded.done()

    def supersede(self) -> None:
        if not self.superseded.done():
            self.superseded.set_result(None)

    def scoring(self) -> None:
        """A scoring of this search starts (it may queue at the model)."""
        self._busy += 1
        self._idle.clear()

    def scored(self) -> None:
        """A scoring of this search is over: its model work is done or withdrawn."""
        self._busy -= 1
        if self._busy <= 0:
            self._busy = 0
            self._idle.set()

    async def withdrawn(self) -> None:
        """Return once no model work of this search is pending."""
        await self._idle.wait()


class Claims:
    """The newest claim of each client."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self._latest: OrderedDict[str, Claim] = OrderedDict()
        self.max_clients = max_clients
        self.superseded = 0  # searches superseded so far

    async def claim(self, key: str | None) -> Claim | None:
        """Take the client's turn: its older search is superseded, and this returns once
        that search's model work is withdrawn. None for a search of no known client."""
        if key is None:
            return None
        new = Claim(key)
        old = self._latest.pop(key, None)
        self._latest[key] = new
        while len(self._latest) > self.max_clients:
            self._latest.popitem(last=False)
        if old is not None and not old.is_superseded:
            old.supersede()
            self.superseded += 1
            await old.withdrawn()
        return new

    def release(self, claim: Claim | None) -> None:
        """The search is answered: forget it unless a newer one took its place."""
        if claim is not None and self._latest.get(claim.key) is claim:
            del self._latest[claim.key]
