"""es_rerank.errors: OpenSearch's error shape, statuses per family, tool errors apart."""

from __future__ import annotations

import pytest

from es_rerank import errors
from es_rerank.errors import (
    BadRequestError,
    BenchError,
    DatasetError,
    EvaluationError,
    LocalNodeError,
    RerankError,
    ToolError,
    UnknownModelError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    error_body,
)


def test_error_body_is_opensearchs_shape():
    assert error_body("rerank_illegal_argument_exception", "bad window", 400) == {
        "error": {
            "root_cause": [{"type": "rerank_illegal_argument_exception", "reason": "bad window"}],
            "type": "rerank_illegal_argument_exception",
            "reason": "bad window",
        },
        "status": 400,
    }


@pytest.mark.parametrize(
    "error, status, type_",
    [
        (BadRequestError("x"), 400, "rerank_illegal_argument_exception"),
        (UnknownModelError("x"), 400, "rerank_unknown_model_exception"),
        (UpstreamUnavailableError("x"), 502, "rerank_upstream_unavailable_exception"),
        (UpstreamTimeoutError("x"), 504, "rerank_upstream_timeout_exception"),
    ],
)
def test_to_body_carries_the_status_and_type(error, status, type_):
    body = error.to_body()
    assert body["status"] == status and body["error"]["type"] == type_ and body["error"]["reason"] == "x"


def test_tool_errors_are_one_branch_without_statuses_of_their_own():
    for cls in (DatasetError, EvaluationError, BenchError, LocalNodeError):
        assert issubclass(cls, ToolError) and issubclass(cls, RerankError)
        assert "status" not in vars(cls) and "type" not in vars(cls)
    assert "status" not in vars(ToolError) and "type" not in vars(ToolError)
    assert DatasetError("bad line").reason == "bad line"


def test_every_error_has_a_one_line_docstring():
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert obj.__doc__ and obj.__doc__.strip(), name
