"""The ``experiments:`` and ``ubi:`` sections of the config: arms, split, keys, salt.

Each experiment covers some index patterns and splits the users whose key it finds
between its arms (``mode: ab``), or serves them one team-draft interleaved list of
its two arms (``mode: interleave``). :func:`experiment_problems` checks what one
experiment cannot check alone (names that point nowhere, duplicates), on the raw
mapping, so a bad file lists every problem at once.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ArmSettings", "ExperimentSettings", "UbiSettings", "experiment_problems", "KEY_SOURCES"]

# Where a user's key is read, in the order the experiment lists them.
KEY_SOURCES = ("ubi.client_id", "header:", "cookie:")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmSettings(_Strict):
    """One arm: OpenSearch's own (first-stage) order, or a rerank with its model and window."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["bm25", "rerank"] = Field(description="bm25: first-stage order; rerank: the model's order")
    model: str | None = Field(None, description="rerank: the model (under `models`); default: the index's")
    window: int | None = Field(None, ge=2, le=10_000, description="rerank: hits reranked (K); default: the index's")
    weight: float = Field(50.0, ge=0, le=100, description="ab: percent of users on this arm (weights add up to 100)")

    @model_validator(mode="after")
    def _check_kind(self) -> ArmSettings:
        if self.kind == "bm25" and (self.model is not None or self.window is not None):
            raise ValueError(f"arm {self.name!r}: a bm25 arm takes no model or window")
        return self


class ExperimentSettings(_Strict):
    """A live comparison on the indices matching ``indices`` (fnmatch patterns)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    indices: list[str] = Field(min_length=1, description="index patterns the experiment covers")
    mode: Literal["ab", "interleave"] = "ab"
    arms: list[ArmSettings] = Field(min_length=2)
    salt: str = Field(min_length=1, description="hashed with the key: change it to reshuffle users")
    keys: list[str] = Field(
        default_factory=lambda: ["ubi.client_id"],
        min_length=1,
        description="where a user's key is read, first found wins: ubi.client_id, header:<name>, cookie:<name>",
    )
    no_key: Literal["exclude", "query"] = Field(
        "exclude",
        description="searches with no key: exclude (served as the index says, not recorded) or query "
        "(assigned by their query_id, recorded)",
    )
    override_header: str = Field(
        "x-rerank-arm", description="request header naming an arm to force (QA); forced searches are recorded as such"
    )
    enabled: bool = True

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, keys: list[str]) -> list[str]:
        bad = [k for k in keys if not _valid_key(k)]
        if bad:
            raise ValueError(f"unknown key source(s) {bad}; use ubi.client_id, header:<name> or cookie:<name>")
        return keys

    @model_validator(mode="after")
    def _check_arms(self) -> ExperimentSettings:
        problems = []
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"arm names used twice: {dupes}")
        if self.mode == "ab":
            total = sum(a.weight for a in self.arms)
            if abs(total - 100.0) > 1e-6:
                problems.append(f"arm weights add up to {total:g}, not 100")
        else:
            kinds = sorted(a.kind for a in self.arms)
            if kinds != ["bm25", "rerank"]:
                problems.append(f"interleave needs exactly one bm25 arm and one rerank arm, got kinds {kinds}")
        if not _HEADER_NAME.fullmatch(self.override_header):
            problems.append(f"override_header {self.override_header!r} is not a header name")
        if problems:
            raise ValueError(f"experiment {self.name!r}: " + "; ".join(problems))
        return self

    def arm(self, name: str) -> ArmSettings | None:
        return next((a for a in self.arms if a.name == name), None)

    def covers(self, index: str) -> bool:
        return any(fnmatch.fnmatchcase(index, p) for p in self.indices)


class UbiSettings(_Strict):
    """Where and how served searches and posted events are written (UBI's index names by default)."""

    queries_index: str = Field("ubi_queries", min_length=1)
    events_index: str = Field("ubi_events", min_length=1)
    create_indices: bool = Field(True, description="create both indices with UBI's mappings when missing")
    queue_size: int = Field(
        10_000, ge=1, description="documents waiting to be written; past it they are dropped (counted)"
    )
    batch_size: int = Field(500, ge=1, description="documents per _bulk request")
    flush_interval_ms: float = Field(200.0, gt=0, le=60_000, description="longest a document waits for its batch")
    write_timeout: float = Field(5.0, gt=0, description="seconds for one _bulk request")
    max_events: int = Field(1000, ge=1, description="events per POST /_rerank/ubi/events")
    application: str | None = Field(None, description="UBI `application` written on each query document")

    @model_validator(mode="after")
    def _check_names(self) -> UbiSettings:
        for key in ("queries_index", "events_index"):
            name = getattr(self, key)
            if name != name.lower() or any(c in name for c in ' ,"*\\<|>/?#:') or name.startswith(("_", "-", "+")):
                raise ValueError(f"{key} {name!r} is not a valid index name")
        if self.queries_index == self.events_index:
            raise ValueError("queries_index and events_index must differ")
        return self


def _valid_key(key: str) -> bool:
    if key == "ubi.client_id":
        return True
    kind, _, name = key.partition(":")
    return kind in ("header", "cookie") and bool(name) and bool(_HEADER_NAME.fullmatch(name))


def experiment_problems(data: Mapping) -> list[str]:
    """What the experiments section gets wrong against the rest of the config (models
    that do not exist, names used twice, patterns no reranked index rule covers). Works
    on the raw mapping, so it is reported even when other fields fail validation."""
    experiments = data.get("experiments")
    if experiments is None:
        return []
    if not isinstance(experiments, list):
        return []  # pydantic says so
    models: Mapping[str, Any] = data["models"] if isinstance(data.get("models"), Mapping) else {}
    rules = (
        [s for s in (data.get("indices") or []) if isinstance(s, Mapping)]
        if isinstance(data.get("indices"), list)
        else []
    )
    problems: list[str] = []
    seen_names: set[str] = set()
    seen_patterns: dict[str, str] = {}
    for exp in experiments:
        if not isinstance(exp, Mapping):
            continue
        name = exp.get("name")
        label = f"experiment {name!r}"
        if isinstance(name, str):
            if name in seen_names:
                problems.append(f"{label}: the name is used twice")
            seen_names.add(name)
        for pattern in exp.get("indices") or []:
            if not isinstance(pattern, str):
                continue
            if pattern in seen_patterns and exp.get("enabled", True) is not False:
                problems.append(
                    f"{label}: index pattern {pattern!r} is already in experiment {seen_patterns[pattern]!r}"
                )
            seen_patterns.setdefault(pattern, str(name))
            rule = next(
                (r for r in rules if isinstance(r.get("pattern"), str) and fnmatch.fnmatchcase(pattern, r["pattern"])),
                None,
            )
            if rule is None:
                problems.append(f"{label}: index pattern {pattern!r} is not covered by any `indices` rule")
            elif rule.get("rerank") is False:
                problems.append(
                    f"{label}: index pattern {pattern!r} falls under rule {rule.get('pattern')!r}, which does not rerank"
                )
        for arm in exp.get("arms") or []:
            if isinstance(arm, Mapping) and isinstance(arm.get("model"), str) and arm["model"] not in models:
                problems.append(f"{label}: arm {arm.get('name')!r}: model {arm['model']!r} is not under models")
    return problems
