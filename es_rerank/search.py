"""One ``_search``: plan -> first stage -> score -> rebuild.

1. the body is read as OpenSearch reads it (:meth:`ClientRequest.json_body`); what the
   proxy does not read goes to OpenSearch untouched;
2. :func:`~es_rerank.plan.plan_search` decides: rerank, or pass through with a reason;
3. the first stage: OpenSearch is asked for the whole window (:class:`Forwarder`);
4. :class:`~es_rerank.scoring.Scorer` scores it under its deadline, degrading as the
   index says, and :func:`~es_rerank.rebuild.rebuild_response` orders the page;
5. the answer is framed as OpenSearch frames its own, with the ``x-rerank-*`` headers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response

from .bodies import dumps, loads_response
from .config import IndexSettings, Settings
from .errors import UpstreamBadResponseError
from .experiments.flow import BM25_REASON, ExperimentFlow, Trial, search_target
from .forwarding import ClientRequest, Forwarder
from .plan import SearchPlan, passthrough_plan, plan_search
from .rebuild import response_problem
from .reranker import Reranker
from .responses import dump_for, marks, rebuilt, relay
from .scoring import Outcome, Reason, Scorer
from .supersession import Claim, client_key

__all__ = ["SearchFlow", "read_answer"]

_OFF = {"false", "0", "off", "no"}


def read_answer(content: bytes, problem: Any) -> dict:
    """OpenSearch's JSON answer, or a 502 that says what was wrong with it."""
    try:
        data = loads_response(content)
    except (ValueError, RecursionError) as exc:
        raise UpstreamBadResponseError(f"OpenSearch's answer is not JSON: {exc}") from None
    reason = problem(data)
    if reason is not None:
        raise UpstreamBadResponseError(f"OpenSearch's answer cannot be reranked: {reason}")
    return data


class SearchFlow:
    """Serves ``_search`` requests; the collaborators are passed in."""

    def __init__(
        self,
        settings: Settings,
        *,
        forwarder: Forwarder,
        scorer: Scorer,
        rerankers: Mapping[str, Reranker],
        experiments: ExperimentFlow | None = None,
    ) -> None:
        self.settings = settings
        self.forwarder = forwarder
        self.scorer = scorer
        self.rerankers = rerankers
        self.experiments = experiments  # A/B and interleaving (es_rerank/experiments/)

    def plan(
        self, spec: IndexSettings, body: Mapping[str, Any], params: list[tuple[str, str]], request: ClientRequest
    ) -> SearchPlan:
        return plan_search(
            spec,
            body,
            params,
            models=list(self.rerankers),
            default_model=self.settings.model_for(spec),
            disabled_by_header=request.header("x-rerank-enabled").lower() in _OFF,
        )

    async def __call__(self, request: ClientRequest, spec: IndexSettings | None) -> Response:
        """One ``_search``; ``spec`` None: a target with no rerank config, answered by
        OpenSearch, less the ``ext.rerank`` a client may send to every index."""
        started = time.perf_counter()
        if spec is None and b"rerank" not in request.body and not request.header("content-encoding"):
            return await self.forwarder.passthrough(request)  # nothing of es-rerank's in it

        body, unread = request.json_body(self.settings.server.max_content_length)
        if unread is not None:
            return await self.forwarder.passthrough(request, marks(Outcome.SKIPPED, unread))
        params = request.params
        skip = request.other_format()
        if skip is None and any(k in ("source", "source_content_type") for k, _ in params):
            skip = "source_param"
        if skip is None and spec is None:
            skip = "no_configured_index"
        if skip is not None or spec is None:
            return await self.forwarder.forward_plan(request, body, passthrough_plan(body, params, skip or ""))

        # Experiments: the arm's model and window; ext.ubi is es-rerank's to record.
        trial = (
            self.experiments.begin(request.headers, spec, body, search_target(request.raw_path))
            if self.experiments
            else None
        )
        if trial is not None:
            spec = trial.spec
        planned = body if trial is None else trial.body
        plan = self.plan(spec, planned, params, request)
        # The client's newest search: its older ones stop first (es_rerank/supersession.py),
        # so it is never shed on the queue of the searches it replaced.
        key = self.client_key(request, [body], [spec.pattern]) if plan.rerank else None
        claim = await self.scorer.claim(key)
        try:
            return await self._planned(request, spec, body, planned, plan, trial, started, claim)
        finally:
            self.scorer.release(claim)

    def client_key(self, request: ClientRequest, bodies: list[Any], indices: list[str]) -> str | None:
        """Whose search this is, for supersession (None: nobody's newer search)."""
        headers = {k.lower(): v for k, v in request.headers}
        return client_key(
            headers, request.address, bodies, indices, header=self.settings.server.supersede.client_header
        )

    async def _planned(
        self,
        request: ClientRequest,
        spec: IndexSettings,
        body: Any,
        planned: Any,
        plan: SearchPlan,
        trial: Trial | None,
        started: float,
        claim: Claim | None,
    ) -> Response:
        params = request.params
        if plan.rerank and self.scorer.overloaded(plan, spec):
            # No model could score this in time even first in line after the work queued
            # now: OpenSearch's own answer, as cheaply as a skip, but marked a fallback.
            shed = passthrough_plan(planned, params, Reason.OVERLOADED)
            return await self.forwarder.forward_plan(request, body, shed, Outcome.FALLBACK)
        if not plan.rerank:
            return await self.forwarder.forward_plan(request, body, plan)

        t_upstream = time.perf_counter()
        answer = await self.forwarder.send(
            request, "POST", urlencode(plan.params).encode(), dumps(plan.body), decode=True
        )
        upstream_ms = (time.perf_counter() - t_upstream) * 1000
        if answer.status == 400:
            # The rewrite may be what OpenSearch refused (`fields` on an index whose _source
            # is disabled, a limit on size): the client gets the answer to its own request.
            return await self.forwarder.forward_plan(
                request, body, passthrough_plan(planned, params, "rewrite_refused")
            )
        if answer.status != 200:
            return relay(answer, marks(Outcome.SKIPPED, "upstream_error"))
        data = read_answer(answer.content, response_problem)
        gone = request.disconnected() if request.disconnected is not None else None
        if trial is not None:  # experiments: the arm's order, recorded as served
            reranked, scored, timings = await trial.serve(self.scorer, plan, data, started, upstream_ms, gone, claim)
            if scored is None:  # the bm25 arm: first-stage order, nothing scored
                headers = [*marks(Outcome.SKIPPED, BM25_REASON), *trial.headers()]
                return relay(
                    rebuilt(request.header("accept-encoding"), answer.headers, dump_for(reranked, params)), headers
                )
        else:
            reranked, scored, timings = await self.scorer.rerank(plan, spec, data, started, upstream_ms, gone, claim)
        headers = [
            *(trial.headers() if trial is not None else ()),
            *marks(scored.outcome, scored.reason),
            ("x-rerank-model", scored.model),
            ("x-rerank-provider", str(self.rerankers[scored.model].info().get("provider", ""))),
            ("x-rerank-window", str(scored.window)),
            *(timings.headers() if timings is not None else ()),
            ("x-rerank-total-ms", f"{(time.perf_counter() - started) * 1000:.1f}"),
        ]
        content = dump_for(reranked, params)
        return relay(rebuilt(request.header("accept-encoding"), answer.headers, content), headers)
