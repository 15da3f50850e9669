"""Team-draft interleaving (Radlinski, Kurup and Joachims 2008) and the served order. Pure.

Both lists come from the same first-stage window (no second upstream call): the
first-stage order and the reranked order of the same hits. The coin flips come from
a seed, so one query id gives one interleaved list, and its from/size pages are
slices of it (page-stable).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .assign import Assignment

__all__ = ["team_draft", "Served", "serve", "interleave_seed"]

K = TypeVar("K", bound=Hashable)


def team_draft(a: Sequence[K], b: Sequence[K], seed: str) -> list[tuple[K, int]]:
    """One list from rankings ``a`` and ``b``: each round the team with fewer picks
    (a coin flip on a tie) adds its highest item not yet in the list. Returns
    ``(item, team)`` pairs, team 0 for ``a`` and 1 for ``b``; every item of either
    list appears once. Deterministic for a given ``seed``."""
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:8], "big"))
    out: list[tuple[K, int]] = []
    taken: set[K] = set()
    picks = [0, 0]
    heads = [0, 0]
    lists = (a, b)
    total = len(set(a) | set(b))
    while len(out) < total:
        coin = rng.random() < 0.5  # drawn every round, so the flips do not depend on the lists
        team = 0 if picks[0] < picks[1] or (picks[0] == picks[1] and coin) else 1
        for side in (team, 1 - team):  # a team whose list is used up passes its turn
            ranking = lists[side]
            while heads[side] < len(ranking) and ranking[heads[side]] in taken:
                heads[side] += 1
            if heads[side] < len(ranking):
                item = ranking[heads[side]]
                taken.add(item)
                out.append((item, side))
                picks[side] += 1
                break
    return out


@dataclass(frozen=True)
class Served:
    """The window in the order served (``order``: keys), and each hit's team (interleaving)."""

    order: list
    teams: list[str] | None = None

    def page(self, from_: int, size: int) -> Served:
        end = from_ + size
        return Served(self.order[from_:end], None if self.teams is None else self.teams[from_:end])


def interleave_seed(assignment: Assignment, query_text: str) -> str:
    """The coin flips' seed: the client's query id when it sent one (so it can page
    with it), else the user's key and the query text (the same list for every page of
    the same search)."""
    salt = assignment.experiment.salt
    if assignment.query_id_given:
        return f"{salt}\x00qid\x00{assignment.query_id}"
    who = assignment.client_id if assignment.client_id is not None else assignment.query_id
    return f"{salt}\x00key\x00{who}\x00{query_text}"


def serve(assignment: Assignment, first_stage: Sequence[K], reranked: Sequence[K], *, query_text: str = "") -> Served:
    """The whole window in the order the assignment serves it: an arm's own order, or
    the team-draft interleaving of both (team A: the bm25 arm, team B: the rerank arm)."""
    if assignment.arm is not None:
        return Served(list(first_stage if assignment.arm.kind == "bm25" else reranked))
    names = assignment.teams
    mixed = team_draft(first_stage, reranked, interleave_seed(assignment, query_text))
    return Served([k for k, _ in mixed], [names[t] for _, t in mixed])
