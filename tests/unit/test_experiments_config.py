"""The experiments: and ubi: config sections; every problem reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from es_rerank import settings_from_dict
from es_rerank.errors import ConfigError
from es_rerank.experiments.ubi import EVENTS_MAPPING, QUERIES_MAPPING

ROOT = Path(__file__).resolve().parents[2]


def _base(**extra):
    return {
        "models": {"m": {"path": "/tmp/m"}, "m2": {"path": "/tmp/m2"}},
        "indices": [{"pattern": "docs*", "model": "m"}, {"pattern": "raw*", "rerank": False}],
        **extra,
    }


def test_good_experiment():
    s = settings_from_dict(
        _base(
            experiments=[
                {
                    "name": "rr-vs-bm25",
                    "indices": ["docs"],
                    "salt": "2026-12",
                    "arms": [
                        {"name": "bm25", "kind": "bm25"},
                        {"name": "rr", "kind": "rerank", "model": "m2", "window": 20},
                    ],
                }
            ],
            ubi={"queue_size": 100},
        ),
        env={},
    )
    assert s.experiments[0].arm("rr").window == 20 and s.ubi.queries_index == "ubi_queries"


def test_every_problem_at_once():
    bad = _base(
        experiments=[
            {
                "name": "a",
                "indices": ["docs", "raw1", "nowhere"],
                "salt": "",
                "mode": "interleave",
                "keys": ["ubi.client_id", "header:", "ip"],
                "arms": [
                    {"name": "x", "kind": "rerank", "model": "missing"},
                    {"name": "y", "kind": "rerank"},
                    {"name": "z", "kind": "bm25", "window": 5},
                ],
            },
            {
                "name": "a",
                "indices": ["docs"],
                "salt": "s",
                "arms": [{"name": "p", "kind": "bm25", "weight": 60}, {"name": "p", "kind": "rerank", "weight": 60}],
            },
        ],
        ubi={"queries_index": "UBI", "queue_size": 0},
    )
    with pytest.raises(ConfigError) as info:
        settings_from_dict(bad, env={})
    text = "\n".join(info.value.problems)
    for needle in (
        "experiments.0.salt",
        "unknown key source(s) ['header:', 'ip']",
        "a bm25 arm takes no model or window",
        "arm names used twice: ['p']",
        "arm weights add up to 120, not 100",
        "ubi.queue_size",
        "experiment 'a': the name is used twice",
        "index pattern 'docs' is already in experiment 'a'",
        "index pattern 'nowhere' is not covered by any `indices` rule",
        "index pattern 'raw1' falls under rule 'raw*', which does not rerank",
        "arm 'x': model 'missing' is not under models",
    ):
        assert needle in text, (needle, text)


def test_interleave_needs_one_bm25_and_one_rerank_arm():
    bad = _base(
        experiments=[
            {
                "name": "i",
                "indices": ["docs"],
                "salt": "s",
                "mode": "interleave",
                "arms": [{"name": "x", "kind": "rerank"}, {"name": "y", "kind": "rerank"}],
            }
        ]
    )
    with pytest.raises(ConfigError, match="interleave needs exactly one bm25 arm and one rerank arm"):
        settings_from_dict(bad, env={})


def test_mappings_folder_matches_the_code():
    assert json.loads((ROOT / "mappings" / "ubi_queries.json").read_text())["mappings"] == QUERIES_MAPPING
    assert json.loads((ROOT / "mappings" / "ubi_events.json").read_text())["mappings"] == EVENTS_MAPPING
