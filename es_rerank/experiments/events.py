"""``POST /_rerank/ubi/events``: UBI events from browsers, checked, then bulk-written.

The body is one event (a JSON object), a JSON array of events, or NDJSON (one
event per line). Every event is checked before anything is written: one bad event
answers 400 in OpenSearch's error shape naming every problem, and nothing of the
batch is stored. Field names and types are UBI's event schema (1.x).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.responses import Response

from ..bodies import UnreadableBody, loads_request
from ..errors import BadRequestError, MethodNotAllowedError, RerankError, UpstreamUnavailableError
from ..responses import json_response
from .config import UbiSettings
from .ubi import now_iso

__all__ = ["InvalidEventsError", "parse_events", "check_event", "EventsEndpoint"]

_TOP = {
    "application", "action_name", "query_id", "session_id", "client_id", "user_id",
    "timestamp", "message_type", "message", "event_attributes",
}  # fmt: skip
_STRINGS = ("application", "query_id", "session_id", "client_id", "user_id", "message_type", "message")
_POSITION_INTS = ("ordinal", "x", "y", "page_depth", "scroll_depth")
_OBJECT_STRINGS = ("object_id", "object_id_field", "internal_id", "name", "description")
_MAX_STRING = 1024


class InvalidEventsError(BadRequestError):
    """One or more posted UBI events are invalid; none of the batch was stored."""

    type = "ubi_event_parse_exception"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_timestamp(value: Any) -> str | None:
    if _is_int(value):
        return None if value >= 0 else "[timestamp] must be epoch milliseconds or an RFC 3339 date"
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return None
        except ValueError:
            pass
    return "[timestamp] must be epoch milliseconds or an RFC 3339 date"


def check_event(event: Any) -> list[str]:
    """Every problem with one event (empty: valid)."""
    if not isinstance(event, Mapping):
        return [f"an event must be an object, got {type(event).__name__}"]
    problems = []
    unknown = sorted(set(event) - _TOP)
    if unknown:
        problems.append(f"unknown field(s) {unknown}")
    name = event.get("action_name")
    if not isinstance(name, str) or not name.strip():
        problems.append("[action_name] is required (a non-empty string)")
    for key in _STRINGS:
        value = event.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_STRING):
            problems.append(f"[{key}] must be a string of at most {_MAX_STRING} characters")
    if "timestamp" in event:
        problem = _check_timestamp(event["timestamp"])
        if problem:
            problems.append(problem)
    attrs = event.get("event_attributes")
    if attrs is not None:
        if not isinstance(attrs, Mapping):
            problems.append("[event_attributes] must be an object")
        else:
            position = attrs.get("position")
            if position is not None:
                if not isinstance(position, Mapping):
                    problems.append("[event_attributes.position] must be an object")
                else:
                    for key in _POSITION_INTS:
                        if key in position and not (_is_int(position[key]) and position[key] >= 0):
                            problems.append(f"[event_attributes.position.{key}] must be a non-negative integer")
            obj = attrs.get("object")
            if obj is not None:
                if not isinstance(obj, Mapping):
                    problems.append("[event_attributes.object] must be an object")
                else:
                    for key in _OBJECT_STRINGS:
                        allowed = (str, int) if key == "object_id" else (str,)
                        if key in obj and (not isinstance(obj[key], allowed) or isinstance(obj[key], bool)):
                            problems.append(f"[event_attributes.object.{key}] must be a string")
                    if "object_detail" in obj and not isinstance(obj["object_detail"], Mapping):
                        problems.append("[event_attributes.object.object_detail] must be an object")
    return problems


def _normalized(event: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(event)
    out.setdefault("timestamp", now_iso())
    obj = (out.get("event_attributes") or {}).get("object")
    if isinstance(obj, Mapping) and _is_int(obj.get("object_id")):
        attrs = dict(out["event_attributes"])
        attrs["object"] = {**obj, "object_id": str(obj["object_id"])}
        out["event_attributes"] = attrs
    return out


def parse_events(body: bytes, *, max_events: int) -> list[dict[str, Any]]:
    """The valid events of a body, or :class:`InvalidEventsError` naming every problem."""
    text = body.strip()
    if not text:
        raise InvalidEventsError("request body is required: one UBI event, a JSON array of them, or NDJSON")
    events: list[Any] = []
    problems: list[str] = []
    try:
        whole = loads_request(text)
    except UnreadableBody:
        whole = UnreadableBody
    if whole is UnreadableBody:
        for n, line in enumerate(text.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                events.append(loads_request(line))
            except UnreadableBody as exc:
                problems.append(f"line {n}: not JSON ({exc})")
                events.append(None)
    elif isinstance(whole, list):
        events = whole
    else:
        events = [whole]
    if len(events) > max_events:
        raise InvalidEventsError(f"{len(events)} events in one request; at most {max_events}")
    if not events:
        raise InvalidEventsError("no events in the request body")
    for i, event in enumerate(events):
        if event is None and problems:
            continue
        for problem in check_event(event):
            problems.append(f"event {i}: {problem}")
    if problems:
        raise InvalidEventsError(f"{len(problems)} problem(s), nothing stored: " + "; ".join(problems))
    return [_normalized(e) for e in events]


class EventsEndpoint:
    """``POST /_rerank/ubi/events``: check every event, then write them all in one ``_bulk``.

    Answers 200 ``{"acknowledged": true, "written": n}``; 400 when an event is bad
    (nothing written); 503 when OpenSearch cannot be reached or refuses events (the
    answer says how many were written and why the others were not). ``?refresh=``
    is passed to the ``_bulk`` request.
    """

    def __init__(self, settings: UbiSettings, recorder) -> None:
        self.settings = settings
        self.recorder = recorder

    async def handle(self, request) -> Response:
        if request.method not in ("POST", "PUT"):
            raise MethodNotAllowedError(
                f"Incorrect HTTP method for uri [/_rerank/ubi/events] and method [{request.method}], allowed: [POST, PUT]"
            )
        try:
            body = request.decoded_body(16 * 1024 * 1024)
        except UnreadableBody as exc:
            raise InvalidEventsError(f"request body cannot be decoded: {exc}") from None
        events = parse_events(body, max_events=self.settings.max_events)
        refresh = next((v for k, v in reversed(request.params) if k == "refresh"), None)
        try:
            written, errors = await self.recorder.write_now(self.settings.events_index, events, refresh=refresh)
        except RerankError as exc:
            raise UpstreamUnavailableError(f"UBI events not stored: {exc.reason}") from None
        if errors:
            body = {
                "acknowledged": False,
                "written": written,
                "failed": len(errors),
                "reasons": sorted(set(errors))[:10],
                "status": 503,
            }
            return json_response(body, 503)
        return json_response({"acknowledged": True, "written": written}, 200)
