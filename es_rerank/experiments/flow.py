"""What a search under an experiment serves and records.

:meth:`ExperimentFlow.begin` finds the search's experiment and assignment (or None:
the search is served as the index says). The :class:`Trial` it returns carries the
arm's settings (its model and window) and the body to plan (less ``ext.rerank``'s
neighbour ``ext.ubi``, which es-rerank records itself). After the first stage,
:meth:`Trial.serve` orders the page as the arm says (first-stage order, the model's
order, or both interleaved from the same window), records the page as served and
echoes the query id in the response's ``ext.ubi``, as UBI's plugin does.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Mapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote

from ..config import IndexSettings, Settings
from ..metrics import Metrics, RequestTimings
from ..plan import SearchPlan
from ..rebuild import rebuild_response
from .assign import Assignment, Experiments, ubi_ext, without_ubi
from .interleave import serve
from .record import Recorder
from .ubi import hit_object_id, query_document

__all__ = ["ExperimentFlow", "Trial", "search_target", "BM25_REASON"]

BM25_REASON = "experiment_bm25"  # x-rerank-reason of a search its arm serves in first-stage order


def search_target(raw_path: bytes) -> str:
    """The index expression of ``/<target>/_search`` (``""`` for ``/_search``)."""
    segments = [s for s in raw_path.decode("latin-1").split("/") if s]
    return unquote(segments[0]) if len(segments) == 2 else ""


class _Headers:
    """Case-insensitive header lookup over a request's header pairs, cookies parsed on demand."""

    def __init__(self, pairs) -> None:
        self._pairs = pairs
        self._cookies: dict[str, str] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self._pairs if k.lower() == name), default)

    @property
    def cookies(self) -> Mapping[str, str]:
        if self._cookies is None:
            jar = SimpleCookie()
            for value in (v for k, v in self._pairs if k.lower() == "cookie"):
                try:
                    jar.load(value)
                except Exception:  # a malformed cookie header: no cookie key
                    pass
            self._cookies = {k: m.value for k, m in jar.items()}
        return self._cookies


class _Cookies(Mapping):
    def __init__(self, headers: _Headers) -> None:
        self._headers = headers

    def __getitem__(self, key):
        return self._headers.cookies[key]

    def get(self, key, default=None):
        return self._headers.cookies.get(key, default)

    def __iter__(self):
        return iter(self._headers.cookies)

    def __len__(self):
        return len(self._headers.cookies)


class ExperimentFlow:
    """The experiments of one proxy; ``recorder`` writes what was served."""

    def __init__(self, settings: Settings, recorder: Recorder, metrics: Metrics) -> None:
        self.settings = settings
        self.experiments = Experiments(settings.experiments)
        self.recorder = recorder
        self.metrics = metrics
        self._specs: dict[tuple[int, str], IndexSettings] = {}

    def begin(self, headers, spec: IndexSettings, body: Any, target: str) -> Trial | None:
        """The search's trial, or None (no experiment, or no key and excluded). Raises
        :class:`~es_rerank.errors.BadRequestError` for a malformed ``ext.ubi`` or override."""
        if not self.experiments or not isinstance(body, dict) or not target:
            return None
        if self.experiments.for_index(target) is None:
            return None
        lookup = _Headers(headers)
        assignment = self.experiments.assign(target, lookup, _Cookies(lookup), ubi_ext(body))  # type: ignore[arg-type]  # a case-insensitive lookup, not a Mapping
        if assignment is None:
            return None
        return Trial(self, assignment, self._arm_spec(spec, assignment), without_ubi(body), target)

    def _arm_spec(self, spec: IndexSettings, assignment: Assignment) -> IndexSettings:
        """The index's settings with the arm's model and window (made once per arm)."""
        arm = assignment.rerank_arm
        if arm is None or (arm.model is None and arm.window is None):
            return spec
        key = (id(spec), f"{assignment.experiment.name}/{arm.name}")
        found = self._specs.get(key)
        if found is None:
            window = arm.window or spec.window
            update: dict[str, Any] = {"window": window, "max_window": max(spec.max_window, window)}
            if arm.model is not None:
                update["model"] = arm.model
            found = self._specs[key] = spec.model_copy(update=update)
        return found


def _key(hit: Mapping[str, Any]) -> tuple[Any, Any]:
    return hit.get("_index"), hit.get("_id")


@dataclasses.dataclass
class Trial:
    flow: ExperimentFlow
    assignment: Assignment
    spec: IndexSettings  # the arm's settings
    body: dict[str, Any]  # what to plan: the client's body less ext.ubi
    target: str
    served: bool = False  # serve() ran: the page was recorded

    def headers(self) -> list[tuple[str, str]]:
        a = self.assignment
        return [("x-rerank-arm", a.label), ("x-rerank-query-id", a.query_id)]

    async def serve(
        self,
        scorer,
        plan: SearchPlan,
        data: dict[str, Any],
        started: float,
        upstream_ms: float,
        gone: Awaitable[None] | None = None,
        claim: Any = None,
    ) -> tuple[dict[str, Any], Any, RequestTimings | None]:
        """The page as the arm serves it, recorded: ``(response, Scored or None, timings or None)``
        (None: the bm25 arm, nothing scored)."""
        a = self.assignment
        teams = None
        self.served = True
        if a.arm is not None and a.arm.kind == "bm25":
            proxy_ms = int(round((time.perf_counter() - started) * 1000 - upstream_ms))
            page = rebuild_response(plan, data, None, proxy_ms=proxy_ms, expose_first_stage=False)
            scored = timings = None
            close = getattr(gone, "close", None)
            if close is not None:
                close()  # nothing to cancel: no model runs for this arm
        elif a.arm is not None:
            page, scored, timings = await scorer.rerank(plan, self.spec, data, started, upstream_ms, gone, claim)
        else:
            page, teams, scored, timings = await self._interleaved(
                scorer, plan, data, started, upstream_ms, gone, claim
            )
        hits = page.get("hits", {}).get("hits", [])
        object_id_field = a.ubi.get("object_id_field")
        outcome = "bm25" if scored is None else str(scored.outcome)
        self.flow.recorder.record_query(
            query_document(
                a,
                index=self.target,
                object_ids=[hit_object_id(h, object_id_field) for h in hits],
                teams=teams,
                from_=plan.from_,
                size=plan.size,
                model=None if scored is None else scored.model,
                window=plan.window if scored is None else scored.window,
                outcome=outcome,
                user_query=plan.query,
                query=self.body,
                query_response_id=str(uuid.uuid4()),
                application=self.flow.settings.ubi.application,
            )
        )
        self.flow.metrics.observe_arm(a.experiment.name, a.label)
        ext = page.get("ext")
        page["ext"] = {**(ext if isinstance(ext, Mapping) else {}), "ubi": {"query_id": a.query_id}}
        return page, scored, timings

    async def _interleaved(self, scorer, plan, data, started, upstream_ms, gone, claim=None):
        """Team-draft interleaving of the first-stage and reranked orders of one window,
        sliced to the page; the hits past the window follow in first-stage order."""
        first = data.get("hits", {}).get("hits", [])
        whole = dataclasses.replace(plan, from_=0, size=max(len(first), plan.from_ + plan.size))
        full, scored, timings = await scorer.rerank(whole, self.spec, data, started, upstream_ms, gone, claim)
        ranked = full["hits"]["hits"]
        # A partial score leaves the window's tail in first-stage order: still the same hits.
        k = min(plan.window, len(first), len(ranked))
        served = serve(
            self.assignment, [_key(h) for h in first[:k]], [_key(h) for h in ranked[:k]], query_text=plan.query or ""
        )
        by_key = {_key(h): h for h in ranked[:k]}
        ordered = [by_key[key] for key in served.order] + ranked[k:]
        teams = list(served.teams or []) + [""] * (len(ranked) - k)
        end = plan.from_ + plan.size
        page = dict(full)
        page["hits"] = {**full["hits"], "hits": ordered[plan.from_ : end]}
        return page, teams[plan.from_ : end], scored, timings
