"""Scoring one search's window against a deadline, degrading rather than locking up.

A search is tried on its model first. When the model's queue and the window would not
make the deadline (``server.shed_overload``: 90% of ``rerank_timeout``), the index's
``degrade`` steps are tried in order:

- ``fallback_model``: the whole window on the index's cheaper ``fallback_model``;
- ``shrink_window``: on the model of the step before, only the first k' <= K hits that
  fit the time left are scored; the rest keep first-stage order below them;
- ``first_stage``: OpenSearch's order (also what is left when every step is refused).

The last scoring step is never refused on an estimate when its model has nothing queued
(the batcher's rule), so an idle proxy always scores something. A timeout, a model
error or a client that went away answers in first-stage order. What happened is one
:class:`Outcome` and one :class:`Reason`, the same for ``_search`` and ``_msearch`` items.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from .blend import blend_scores, first_stage_scores
from .config import IndexSettings, ServerSettings
from .errors import ModelOverloadedError
from .metrics import Metrics, RequestTimings
from .passages import aggregate_scores, hit_text, split_passages
from .plan import SearchPlan
from .rebuild import rebuild_response, window_hits
from .reranker import Reranker, ScoreStats
from .supersession import Claim, Claims

__all__ = ["Outcome", "Reason", "Scored", "Step", "Scorer", "degrade_steps", "SHED_AT"]

logger = logging.getLogger("es_rerank")

# A search must be scored within this share of rerank_timeout: the estimate is an
# average and the rest of the request (rebuilding the answer) needs time too.
SHED_AT = 0.9


class Outcome(StrEnum):
    """What a search (or an ``_msearch`` item) got: the ``x-rerank`` header."""

    RERANKED = "reranked"  # model order for the window (or its scored part)
    FALLBACK = "fallback"  # reranking was asked for but first-stage order was answered
    SKIPPED = "skipped"  # not a search to rerank (sort, scroll, size 0, no query text...)
    ERROR = "error"  # an error answer (es-rerank's own or OpenSearch's)


class Reason(StrEnum):
    """Why, for the outcomes the scoring stage decides: the ``x-rerank-reason`` header."""

    RERANKED = "reranked"  # the search's model scored the whole window
    FALLBACK_MODEL = "fallback_model"  # the index's fallback_model scored the whole window
    PARTIAL = "partial"  # only the first hits that fit were scored (x-rerank-window says how many)
    OVERLOADED = "overloaded"  # no step could be scored in time
    RERANK_TIMEOUT = "rerank_timeout"  # scoring ran past rerank_timeout
    RERANK_ERROR = "rerank_error"  # the model failed
    CLIENT_CLOSED = "client_closed"  # the client went away; scoring stopped
    SUPERSEDED = "superseded"  # the same client sent a newer search (es_rerank/supersession.py)


@dataclass(frozen=True)
class Step:
    """One way to score: a model, the whole window or only what fits, and whether it is
    the last (taken whatever the estimate when its model is idle)."""

    model: str
    partial: bool = False
    last: bool = False


@dataclass(frozen=True)
class Scored:
    """One search's scoring: ``scores`` for its first ``window`` hits, or None (first-stage order)."""

    scores: np.ndarray | None
    outcome: Outcome
    reason: Reason
    model: str  # the model that scored; the search's own model when none did
    window: int  # hits scored (the planned window when none were)


def degrade_steps(spec: IndexSettings, model: str) -> list[Step]:
    """The steps a search on ``spec`` with ``model`` tries, in order."""
    steps = [Step(model)]
    for name in spec.degrade_steps():
        if name == "fallback_model" and spec.fallback_model not in (None, model):
            steps.append(Step(spec.fallback_model))
        elif name == "shrink_window":
            steps[-1] = dataclasses.replace(steps[-1], partial=True)
        elif name == "first_stage":
            break
    steps[-1] = dataclasses.replace(steps[-1], last=True)
    return steps


def _model(plan: SearchPlan) -> str:
    """The model of a plan to rerank (plans that pass through have none)."""
    if plan.model is None:
        raise ValueError("the search is not planned for reranking")
    return plan.model


class Scorer:
    """Runs the steps for one search under ``server``'s deadline; counts outcomes in ``metrics``."""

    def __init__(self, server: ServerSettings, rerankers: Mapping[str, Reranker], metrics: Metrics) -> None:
        self.server = server
        self.rerankers = rerankers
        self.metrics = metrics
        self.claims = Claims()

    async def claim(self, key: str | None) -> Claim | None:
        """The client's turn at the model for a search about to be reranked (before the
        overload check): its older search is superseded and its model work withdrawn first.
        None when the client is not known or ``server.supersede`` is off."""
        return await self.claims.claim(key) if self.server.supersede.enabled else None

    def release(self, claim: Claim | None) -> None:
        """The search holding ``claim`` is answered."""
        self.claims.release(claim)

    def overloaded(self, plan: SearchPlan, spec: IndexSettings) -> bool:
        """Every model the search could use has a queue that alone outlasts the budget
        (with ``shed_overload``): not worth asking OpenSearch for the window."""
        if not self.server.shed_overload:
            return False
        budget = SHED_AT * self.server.rerank_timeout
        for step in degrade_steps(spec, _model(plan)):
            wait = self.rerankers[step.model].queue_wait_s()
            if wait is None or wait <= budget:
                return False
        return True

    async def rerank(
        self,
        plan: SearchPlan,
        spec: IndexSettings,
        data: dict,
        started: float,
        upstream_ms: float,
        client_gone: Awaitable[None] | None = None,
        claim: Claim | None = None,
    ) -> tuple[dict[str, Any], Scored, RequestTimings]:
        """Score, reorder and rebuild one search response; records its metrics.

        ``client_gone`` completes when the client disconnects: scoring stops then, so a
        search nobody waits for any more costs no further model time."""
        timings = RequestTimings(upstream_ms=upstream_ms)
        scored = await self.score(plan, spec, data, timings, client_gone, claim)
        self.metrics.observe_rerank(timings)
        self.metrics.observe_outcome(spec.pattern, scored.model, scored.outcome, scored.reason)
        proxy_ms = int(round((time.perf_counter() - started) * 1000 - upstream_ms))
        # A partial window: the scored hits reordered, the rest in first-stage order below.
        planned = plan if scored.scores is None else dataclasses.replace(plan, window=scored.window)
        scores = scored.scores
        if scores is not None and plan.blend is not None:  # the first stage's score blended in, per query
            first = first_stage_scores(window_hits(planned, data))
            if first is not None and len(first) == len(scores):
                scores = blend_scores(scores, first, plan.blend)
        rebuilt = rebuild_response(planned, data, scores, proxy_ms=proxy_ms, expose_first_stage=spec.expose_first_stage)
        return rebuilt, scored, timings

    async def score(
        self,
        plan: SearchPlan,
        spec: IndexSettings,
        data: dict,
        timings: RequestTimings,
        client_gone: Awaitable[None] | None = None,
        claim: Claim | None = None,
    ) -> Scored:
        """The window's scores through the degrade steps, or first-stage order and why.

        ``claim``: the client's turn (:meth:`claim`); when the client sends a newer
        search, this one stops and answers first-stage order (``superseded``)."""
        model = _model(plan)
        if claim is not None and claim.is_superseded:
            return Scored(None, Outcome.FALLBACK, Reason.SUPERSEDED, model, plan.window)
        passages = [hit_text(h, spec.fields, spec.template) for h in window_hits(plan, data)]
        return await self.score_texts(
            plan.query or "", passages, model, spec, timings, client_gone, claim, window=plan.window
        )

    async def score_texts(
        self,
        query: str,
        passages: list[str],
        model: str,
        spec: IndexSettings,
        timings: RequestTimings,
        client_gone: Awaitable[None] | None = None,
        claim: Claim | None = None,
        *,
        window: int | None = None,
    ) -> Scored:
        """``passages``' scores on ``model`` through ``spec``'s degrade steps under the
        deadline, or None and why (a search's window, or the rerank API's documents)."""
        scored_window = len(passages) if window is None else window
        t0 = time.perf_counter()
        timeout = self.server.rerank_timeout
        deadline = t0 + SHED_AT * timeout if self.server.shed_overload else None
        # Without shedding nothing is refused, so the first step is the only one.
        steps = degrade_steps(spec, model) if deadline is not None else [Step(model, last=True)]
        scoring = asyncio.ensure_future(
            asyncio.wait_for(self._steps(steps, query, passages, spec, timings.stats, deadline), timeout=timeout)
        )
        gone = asyncio.ensure_future(client_gone) if client_gone is not None else None

        def first_stage(reason: Reason) -> Scored:
            return Scored(None, Outcome.FALLBACK, reason, model, scored_window)

        if claim is not None:
            claim.scoring()
        try:
            waits: set[asyncio.Future[Any]] = {scoring}
            waits.update([gone] if gone is not None else [])
            waits.update([claim.superseded] if claim is not None else [])
            if len(waits) > 1:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not scoring.done():
                    scoring.cancel()  # its pairs not yet run are dropped from the model's queue
                    # Withdrawn from the model before a newer search of the client is admitted.
                    await asyncio.wait({scoring})
                    if gone is not None and gone.done():
                        logger.info("client closed the connection; scoring stopped")
                        return first_stage(Reason.CLIENT_CLOSED)
                    logger.debug("superseded by a newer search of the same client; scoring stopped")
                    return first_stage(Reason.SUPERSEDED)
            step, scores = await scoring
        except ModelOverloadedError as exc:
            logger.info("%s; answering first-stage order", exc)
            return first_stage(Reason.OVERLOADED)
        except TimeoutError:
            logger.warning("rerank timed out after %.1fs; answering first-stage order", timeout)
            return first_stage(Reason.RERANK_TIMEOUT)
        except Exception:
            logger.exception("reranker %s failed; answering first-stage order", model)
            return first_stage(Reason.RERANK_ERROR)
        finally:
            timings.rerank_ms = (time.perf_counter() - t0) * 1000
            if gone is not None:
                gone.cancel()
            if claim is not None:
                claim.scored()
        if len(scores) < len(passages):
            reason, scored_window = Reason.PARTIAL, len(scores)
        else:
            reason = Reason.RERANKED if step.model == model else Reason.FALLBACK_MODEL
        return Scored(scores, Outcome.RERANKED, reason, step.model, scored_window)

    async def _steps(
        self,
        steps: Sequence[Step],
        query: str,
        passages: list[str],
        spec: IndexSettings,
        stats: ScoreStats,
        deadline: float | None,
    ) -> tuple[Step, np.ndarray]:
        """The first step the model admits, and its scores; the last refusal when none does."""
        refused: ModelOverloadedError | None = None
        for step in steps:
            try:
                scores = await score_passages(
                    self.rerankers[step.model], query, passages, spec, stats, deadline,
                    partial=step.partial, admit_idle=step.last,
                )  # fmt: skip
            except ModelOverloadedError as exc:
                logger.debug("step %s refused: %s", step, exc)
                refused = exc
                continue
            return step, scores
        assert refused is not None
        raise refused


async def score_passages(
    reranker: Reranker,
    query: str,
    passages: list[str],
    spec: IndexSettings,
    stats: ScoreStats,
    deadline: float | None = None,
    *,
    partial: bool = False,
    admit_idle: bool = True,
) -> np.ndarray:
    """The model's scores, one per passage, or (``partial``) for the first passages that fit.

    ``deadline`` (``time.perf_counter()``) lets the model refuse a call it cannot make in time."""
    budget_s = None if deadline is None else deadline - time.perf_counter()
    kwargs: dict[str, Any] = {"max_length": spec.max_tokens, "batch_size": spec.batch_size, "stats": stats}
    admission: dict[str, Any] = {"budget_s": budget_s, "partial": partial, "admit_idle": admit_idle}
    if spec.chunking.mode == "truncate":
        return await reranker.ascore(query, passages, **kwargs, **admission)
    max_length = spec.max_tokens or int(reranker.info()["max_length"])
    # Tokenizing every passage is CPU work: keep it off the event loop.
    chunks, owners = await asyncio.to_thread(split_passages, passages, query, spec.chunking, reranker, max_length)
    chunk_scores = await reranker.ascore(query, chunks, **kwargs, **admission)
    n = len(passages)
    if len(chunk_scores) < len(chunks):
        # Chunks come passage by passage: keep the passages all of whose chunks were scored
        # (the first one, from the chunks it got, when not even it was whole).
        n = max(1, owners[len(chunk_scores)])
        kept = [i for i in range(len(chunk_scores)) if owners[i] < n]
        chunk_scores, owners = chunk_scores[kept], [owners[i] for i in kept]
    return aggregate_scores(chunk_scores, owners, n, spec.chunking.aggregate, spec.chunking.top_n)
