"""A real single-node OpenSearch (or Elasticsearch OSS) on loopback, for development and tests.

``node`` runs it (:class:`LocalOpenSearch`: fetch, start, stop, status); ``distributions``
says what differs between OpenSearch and Elasticsearch; ``java`` finds a Java for it;
``users`` runs it as an unprivileged user when es-rerank runs as root; ``process`` watches
its process and port; ``files`` writes its files safely.
"""

from __future__ import annotations

from .distributions import DEFAULT_ELASTICSEARCH_VERSION, DEFAULT_VERSION, Distribution
from .java import find_java, java_range
from .node import LocalOpenSearch, NodeStatus, default_data_dir

__all__ = [
    "DEFAULT_VERSION",
    "DEFAULT_ELASTICSEARCH_VERSION",
    "Distribution",
    "LocalOpenSearch",
    "NodeStatus",
    "default_data_dir",
    "find_java",
    "java_range",
]
