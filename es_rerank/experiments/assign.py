"""Which arm a user is on: a hash of the experiment's salt and the user's key. Pure.

Nothing is stored: every proxy process, and the same process after a restart,
puts a user on the same arm. :class:`Experiments` finds the experiment covering a
search and builds its :class:`Assignment` (arm, query id, key) from the request.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequestError
from .config import ArmSettings, ExperimentSettings

__all__ = ["bucket", "pick_arm", "Assignment", "Experiments", "ubi_ext", "without_ubi", "INTERLEAVED"]

INTERLEAVED = "interleaved"  # x-rerank-arm of an interleaved search
_UBI_STRINGS = ("query_id", "client_id", "user_query", "object_id_field")


def bucket(salt: str, key: str) -> float:
    """Where ``key`` falls in [0, 1) for ``salt``: the first 8 bytes of SHA-256(salt, key)."""
    digest = hashlib.sha256(salt.encode("utf-8") + b"\x00" + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pick_arm(arms: Sequence[ArmSettings], u: float) -> ArmSettings:
    """The arm whose share of [0, 100) holds ``u`` (arms in config order, by weight)."""
    edge = 0.0
    for arm in arms:
        edge += arm.weight / 100.0
        if u < edge:
            return arm
    return arms[-1]  # rounding at the top end


@dataclass(frozen=True)
class Assignment:
    """One search's place in an experiment."""

    experiment: ExperimentSettings
    arm: ArmSettings | None  # None: interleaved (both arms on one list)
    query_id: str
    client_id: str | None  # the user's key, as found
    key_source: str | None  # where it was found (ubi.client_id, header:x, cookie:y); None: no key
    query_id_given: bool = False  # the client sent ext.ubi.query_id
    forced: bool = False  # the override header chose the arm
    ubi: Mapping[str, Any] = field(default_factory=dict)  # the client's ext.ubi

    @property
    def mode(self) -> str:
        return self.experiment.mode

    @property
    def interleaved(self) -> bool:
        return self.arm is None

    @property
    def label(self) -> str:
        """What ``x-rerank-arm`` says."""
        return INTERLEAVED if self.arm is None else self.arm.name

    @property
    def rerank_arm(self) -> ArmSettings | None:
        """The arm whose model orders the window (None: first-stage order only)."""
        if self.arm is not None:
            return self.arm if self.arm.kind == "rerank" else None
        return next(a for a in self.experiment.arms if a.kind == "rerank")

    @property
    def teams(self) -> tuple[str, str]:
        """Interleaving: (the bm25 arm's name, the rerank arm's name)."""
        exp = self.experiment
        return (
            next(a.name for a in exp.arms if a.kind == "bm25"),
            next(a.name for a in exp.arms if a.kind == "rerank"),
        )


def ubi_ext(body: Any) -> dict[str, Any] | None:
    """The body's ``ext.ubi`` (checked as UBI's plugin checks it), or None."""
    if not isinstance(body, Mapping):
        return None
    ext = body.get("ext")
    if not isinstance(ext, Mapping) or "ubi" not in ext:
        return None
    ubi = ext["ubi"]
    if not isinstance(ubi, Mapping):
        raise BadRequestError("[ext.ubi] must be an object")
    for key in _UBI_STRINGS:
        if key in ubi and ubi[key] is not None and not isinstance(ubi[key], str):
            raise BadRequestError(f"[ext.ubi.{key}] must be a string")
    if (
        "query_attributes" in ubi
        and ubi["query_attributes"] is not None
        and not isinstance(ubi["query_attributes"], Mapping)
    ):
        raise BadRequestError("[ext.ubi.query_attributes] must be an object")
    return dict(ubi)


def without_ubi(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` less ``ext.ubi`` (es-rerank records it; OpenSearch without UBI's plugin
    would refuse it, and with it would record the order before the rerank). Not mutated."""
    ext = body.get("ext")
    if not isinstance(ext, Mapping) or "ubi" not in ext:
        return body
    rest = {k: v for k, v in ext.items() if k != "ubi"}
    out = {k: v for k, v in body.items() if k != "ext"}
    if rest:
        out["ext"] = rest
    return out


class Experiments:
    """The configured experiments, and the assignment of each search to one."""

    def __init__(self, experiments: Sequence[ExperimentSettings], *, new_id=None) -> None:
        self.experiments = [e for e in experiments if e.enabled]
        self._new_id = new_id or (lambda: str(uuid.uuid4()))

    def __bool__(self) -> bool:
        return bool(self.experiments)

    def for_index(self, target: str) -> ExperimentSettings | None:
        """The experiment covering every part of ``target`` (``a``, ``a,b``), or None."""
        parts = [p for p in target.split(",") if p]
        chosen = None
        for part in parts:
            exp = next((e for e in self.experiments if e.covers(part)), None)
            if exp is None or (chosen is not None and exp is not chosen):
                return None
            chosen = exp
        return chosen

    def assign(
        self,
        target: str,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        ubi: Mapping[str, Any] | None,
    ) -> Assignment | None:
        """The search's assignment, or None when no experiment covers it or it has no
        key and its experiment excludes such searches. ``headers`` are looked up by
        lower-case name."""
        exp = self.for_index(target)
        if exp is None:
            return None
        ubi = dict(ubi or {})
        client_id, source = _find_key(exp.keys, headers, cookies, ubi)
        given = isinstance(ubi.get("query_id"), str) and bool(ubi["query_id"])
        query_id = ubi["query_id"] if given else self._new_id()
        forced_name = headers.get(exp.override_header.lower())
        if forced_name:
            arm = exp.arm(forced_name.strip())
            if arm is None:
                raise BadRequestError(
                    f"[{exp.override_header}] names no arm of experiment [{exp.name}]; arms: {[a.name for a in exp.arms]}"
                )
            return Assignment(exp, arm, query_id, client_id, source, given, True, ubi)
        if client_id is None:
            if exp.no_key == "exclude":
                return None
            key = "query:" + query_id
        else:
            key = client_id
        arm = pick_arm(exp.arms, bucket(exp.salt, key)) if exp.mode == "ab" else None
        return Assignment(exp, arm, query_id, client_id, source, given, False, ubi)


def _find_key(
    keys: Sequence[str], headers: Mapping[str, str], cookies: Mapping[str, str], ubi: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    for source in keys:
        if source == "ubi.client_id":
            value = ubi.get("client_id")
        elif source.startswith("header:"):
            value = headers.get(source[7:].lower())
        else:
            value = cookies.get(source[7:])
        if isinstance(value, str) and value.strip():
            return value.strip(), source
    return None, None
