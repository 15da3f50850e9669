"""Offline tools, never imported by the serving code: data sets, indexing, evaluation, planning,
benchmarks, the demo, a local OpenSearch node (``localnode``) and model directories (``models``).

Heavy dependencies are imported by the module that needs them; ``import es_rerank.tools`` is cheap.
"""

from __future__ import annotations

from .localnode import LocalOpenSearch, NodeStatus

__all__ = ["LocalOpenSearch", "NodeStatus"]
