"""es_rerank.__all__ is the public serving API: pinned here, so a change to it is a decision."""

from __future__ import annotations

import es_rerank
import es_rerank.tools

EXPECTED = [
    "__version__",
    "BadRequestError",
    "ConfigError",
    "IndexSettings",
    "LocalNodeError",
    "ModelError",
    "ModelOverloadedError",
    "ModelSettings",
    "OnnxReranker",
    "RerankError",
    "RerankProxy",
    "Reranker",
    "Settings",
    "UnknownModelError",
    "Upstream",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "create_app",
    "load_rerankers",
    "load_settings",
    "settings_from_dict",
]


def test_all_is_pinned():
    assert es_rerank.__all__ == EXPECTED


def test_every_exported_name_exists():
    for name in es_rerank.__all__:
        assert hasattr(es_rerank, name), name


def test_the_local_node_is_a_tool_not_serving_api():
    assert "LocalOpenSearch" not in es_rerank.__all__ and not hasattr(es_rerank, "LocalOpenSearch")
    assert "NodeStatus" not in es_rerank.__all__
    assert es_rerank.tools.LocalOpenSearch.__module__ == "es_rerank.tools.localnode.node"


def test_the_package_is_typed():
    from importlib.resources import files

    assert files("es_rerank").joinpath("py.typed").is_file()
