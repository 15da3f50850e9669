"""Live experiments: reranked against first-stage (BM25) order, A/B or interleaved.

One concept per module: ``config`` (the ``experiments:`` and ``ubi:`` sections),
``assign`` (hashed assignment, pure), ``interleave`` (team-draft interleaving, pure),
``ubi`` (UBI's mappings and documents), ``record`` (the bounded async bulk
recorder), ``events`` (checking posted UBI events), ``flow`` (what a search under
an experiment serves and records). Offline reports and the simulation live in
``es_rerank.tools.ab``; serving code never imports them.

This package imports only its pure modules here, so ``es_rerank.config`` can use
its settings without an import cycle.
"""

from .assign import Assignment, Experiments, bucket, pick_arm
from .config import ArmSettings, ExperimentSettings, UbiSettings
from .interleave import Served, serve, team_draft

__all__ = [
    "ArmSettings",
    "Assignment",
    "ExperimentSettings",
    "Experiments",
    "Served",
    "UbiSettings",
    "bucket",
    "pick_arm",
    "serve",
    "team_draft",
]
