"""Configuration: YAML + env -> Settings, clear errors, and the CLI over it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from es_rerank.cli import main
from es_rerank.config import (
    IndexSettings,
    Settings,
    check_model_files,
    load_settings,
    settings_from_dict,
)
from es_rerank.errors import ConfigError

NO_ENV: dict[str, str] = {}
ENV_KEYS = ("ES_RERANK_UPSTREAM_URL", "ES_RERANK_UPSTREAM_USERNAME", "ES_RERANK_UPSTREAM_PASSWORD")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def model_dir(path: Path, *, onnx: bool = True, tokenizer: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if onnx:
        (path / "model.onnx").write_bytes(b"")
    if tokenizer:
        (path / "tokenizer.json").write_bytes(b"")
    return path


# --- defaults ---------------------------------------------------------------


def test_defaults():
    s = settings_from_dict({}, env=NO_ENV)
    assert s == Settings()
    assert s.upstream.url == "http://127.0.0.1:9200"
    assert (s.upstream.username, s.upstream.password) == (None, None)
    assert (s.upstream.connect_timeout, s.upstream.timeout) == (2.0, 30.0)
    assert s.upstream.verify_certs is True
    assert (s.server.host, s.server.port, s.server.rerank_timeout) == ("127.0.0.1", 8000, 10.0)
    assert s.models == {} and s.indices == [] and s.default_model is None


def test_model_and_index_defaults():
    s = settings_from_dict({"models": {"ce": {"path": "/m"}}, "indices": [{"pattern": "docs"}]}, env=NO_ENV)
    m = s.models["ce"]
    assert m.path == Path("/m")
    assert (m.onnx_file, m.tokenizer_file, m.providers, m.max_length, m.head) == (
        "model.onnx",
        "tokenizer.json",
        ["auto"],
        256,
        "auto",
    )
    spec = s.indices[0]
    assert (spec.rerank, spec.fields, spec.window, spec.max_window, spec.template) == (
        True,
        ["title", "text"],
        100,
        500,
        None,
    )
    assert spec.expose_first_stage is True
    assert s.model_for(spec) == "ce"


def test_settings_are_frozen():
    s = settings_from_dict({}, env=NO_ENV)
    with pytest.raises(ValidationError):
        s.upstream.url = "http://elsewhere:9200"  # type: ignore[misc]


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_settings(write(tmp_path / "c.yaml", "# nothing\n"), env=NO_ENV) == Settings()


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(write(tmp_path / "c.yaml", "- a\n- b\n"), env=NO_ENV)


# --- env overrides -----------------------------------------------------------


def test_env_overrides_the_file(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        """
        upstream:
          url: http://from-file:9200
          username: file-user
          password: file-pass
          timeout: 5
    """,
    )
    env = {
        "ES_RERANK_UPSTREAM_URL": "https://from-env:9243",
        "ES_RERANK_UPSTREAM_USERNAME": "env-user",
        "ES_RERANK_UPSTREAM_PASSWORD": "env-pass",
    }
    up = load_settings(path, env=env).upstream
    assert (up.url, up.username, up.password, up.timeout) == ("https://from-env:9243", "env-user", "env-pass", 5.0)
    up = load_settings(path, env=NO_ENV).upstream
    assert (up.url, up.username, up.password) == ("http://from-file:9200", "file-user", "file-pass")


def test_env_fills_in_without_a_file_section():
    s = settings_from_dict({}, env={"ES_RERANK_UPSTREAM_URL": "http://env:9200"})
    assert s.upstream.url == "http://env:9200"
    assert s.upstream.timeout == 30.0


def test_empty_env_value_does_not_override():
    s = settings_from_dict({"upstream": {"url": "http://file:9200"}}, env={"ES_RERANK_UPSTREAM_URL": ""})
    assert s.upstream.url == "http://file:9200"


def test_env_value_is_validated():
    with pytest.raises(ConfigError) as info:
        settings_from_dict({}, env={"ES_RERANK_UPSTREAM_URL": "localhost:9200"})
    assert any("http://" in p for p in info.value.problems)


def test_env_does_not_mutate_the_input():
    data = {"upstream": {"url": "http://file:9200"}}
    settings_from_dict(data, env={"ES_RERANK_UPSTREAM_URL": "http://env:9200"})
    assert data == {"upstream": {"url": "http://file:9200"}}


def test_process_env_used_when_env_not_given(monkeypatch):
    monkeypatch.setenv("ES_RERANK_UPSTREAM_URL", "http://process-env:9200")
    assert settings_from_dict({}).upstream.url == "http://process-env:9200"


# --- model paths ---------------------------------------------------------------


def test_relative_model_paths_resolve_against_the_file(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    path = write(
        conf / "es-rerank.yaml",
        f"""
        models:
          rel: {{path: models/ce}}
          up: {{path: ../shared/ce}}
          abs: {{path: {tmp_path / "abs"}}}
    """,
    )
    monkeypatch.chdir(tmp_path)  # not the file's folder
    models = load_settings(path, env=NO_ENV).models
    assert models["rel"].path == (conf / "models" / "ce").resolve()
    assert models["up"].path == (tmp_path / "shared" / "ce").resolve()
    assert models["abs"].path == tmp_path / "abs"


def test_relative_path_kept_without_a_base():
    s = settings_from_dict({"models": {"m": {"path": "models/ce"}}}, env=NO_ENV)
    assert s.models["m"].path == Path("models/ce")


def test_check_model_files(tmp_path):
    good = model_dir(tmp_path / "good")
    no_onnx = model_dir(tmp_path / "no-onnx", onnx=False)
    s = settings_from_dict(
        {"models": {"good": {"path": str(good)}, "bad": {"path": str(no_onnx)}}, "default_model": "good"},
        env=NO_ENV,
    )
    assert check_model_files(s) == [f"models.bad: {no_onnx / 'model.onnx'} does not exist"]


# --- errors ----------------------------------------------------------------------

BAD_CONFIG = """
    upstream:
      url: ftp://opensearch:9200
    server:
      rerank_timeout: -1
    colour: blue
    models:
      ce: {path: /models/ce}
    indices:
      - pattern: docs
        window: 600
        max_window: 500
      - pattern: papers
        model: nope
"""


def test_several_problems_one_error_in_independent_sections(tmp_path):
    """Field-level problems in different sections are all listed in one ConfigError."""
    path = write(tmp_path / "bad.yaml", BAD_CONFIG.replace("model: nope", "window: 10"))
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=NO_ENV)
    err = info.value
    assert err.type == "rerank_config_exception"
    text = "\n".join(err.problems)
    assert "upstream.url: url must start with http:// or https://, got 'ftp://opensearch:9200'" in text
    assert "server.rerank_timeout: Input should be greater than 0" in text
    assert "colour: Extra inputs are not permitted" in text
    assert "indices.0: window (600) is larger than max_window (500)" in text
    assert len(err.problems) == 4
    for problem in err.problems:
        assert problem in err.reason  # the message lists every problem


def test_every_problem_listed_in_one_error(tmp_path):
    # Settings._check_models (index -> unknown model, default_model) is a pydantic
    # mode="after" validator: it never runs when another field failed, so the
    # "model 'nope' is not under models" problem is missing from the list.
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path / "bad.yaml", BAD_CONFIG), env=NO_ENV)
    assert any("'nope'" in p for p in info.value.problems), info.value.problems


def test_url_and_timeout_problems_in_one_section():
    # UpstreamSettings._check_url is also mode="after": with a negative timeout
    # beside it, the bad url scheme is not reported.
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"upstream": {"url": "ftp://x", "timeout": -1}}, env=NO_ENV)
    assert len(info.value.problems) == 2, info.value.problems


def test_unknown_model_alone(tmp_path):
    data = {"models": {"ce": {"path": "/m"}}, "indices": [{"pattern": "papers", "model": "nope"}]}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, env=NO_ENV)
    assert info.value.problems == ["(top level): index 'papers': model 'nope' is not under models"]


@pytest.mark.parametrize(
    "data,words",
    [
        ({"default_model": "x", "models": {"ce": {"path": "/m"}}}, "default_model 'x' is not under models"),
        ({"models": {"a": {"path": "/a"}, "b": {"path": "/b"}}, "indices": [{"pattern": "d"}]}, "name a model"),
        ({"indices": [{"pattern": "d"}]}, "name a model"),
        ({"upstream": {"timeout": -1}}, "upstream.timeout"),
        ({"upstream": {"connect_timeout": 0}}, "upstream.connect_timeout"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"models": {"m": {"path": "/m", "head": "three"}}}, "models.m.head"),
        (
            {"models": {"m": {}}},
            "models.m: a model needs exactly one of path (in-process ONNX) and remote (reranking servers)",
        ),
        ({"indices": [{"pattern": "d", "fields": []}]}, "indices.0.fields"),
        ({"indices": [{"pattern": "d", "colour": 1}]}, "indices.0.colour: Extra inputs"),
    ],
)
def test_single_problems(data, words):
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, env=NO_ENV)
    assert words in info.value.reason


def test_rerank_false_index_needs_no_model():
    s = settings_from_dict({"indices": [{"pattern": "logs-*", "rerank": False}]}, env=NO_ENV)
    assert s.indices[0].rerank is False


def test_invalid_yaml(tmp_path):
    path = write(tmp_path / "c.yaml", "upstream: [unclosed\n  url: x\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=NO_ENV)
    assert "is not valid YAML" in info.value.reason
    assert str(path) in info.value.reason
    assert info.value.problems  # the parser's own message, with the line


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.yaml", env=NO_ENV)
    assert "cannot read config" in info.value.reason
    assert "nope.yaml" in info.value.reason


# --- index_for / model_for -------------------------------------------------------


@pytest.fixture()
def rules() -> Settings:
    return settings_from_dict(
        {
            "models": {"ce": {"path": "/ce"}, "big": {"path": "/big"}},
            "default_model": "ce",
            "indices": [
                {"pattern": "docs"},
                {"pattern": "logs-*", "rerank": False},
                {"pattern": "papers-*", "model": "big"},
                {"pattern": "papers-2020"},  # shadowed: first match wins
            ],
        },
        env=NO_ENV,
    )


@pytest.mark.parametrize(
    "target,rule",
    [
        ("docs", 0),
        ("docs,docs", 0),
        ("logs-2024", 1),
        ("logs-*", 1),
        ("logs-a,logs-b", 1),
        ("papers-2020", 2),
        ("papers-2020,papers-2021", 2),
        ("docs,", 0),
        ("docs,logs-a", None),  # mixed rules
        ("papers-1,docs", None),
        ("other", None),
        ("docs,other", None),
        ("doc", None),
        ("Docs", None),  # case-sensitive
        ("*", None),
        ("", None),
        (",", None),
    ],
)
def test_index_for(rules, target, rule):
    found = rules.index_for(target)
    if rule is None:
        assert found is None
    else:
        assert found is rules.indices[rule]


def test_model_for(rules, tmp_path):
    assert rules.model_for(rules.indices[0]) == "ce"  # the default
    assert rules.model_for(rules.indices[2]) == "big"  # its own
    only = settings_from_dict({"models": {"solo": {"path": "/s"}}}, env=NO_ENV)
    assert only.model_for(IndexSettings(pattern="x")) == "solo"  # the only one


# --- the CLI -----------------------------------------------------------------------


@pytest.fixture()
def runner() -> CliRunner:
    # Unset the env overrides so the developer's shell cannot change the outcome.
    return CliRunner(env={k: None for k in ENV_KEYS})


def good_config(tmp_path: Path, *, onnx: bool = True) -> Path:
    model_dir(tmp_path / "models" / "ce", onnx=onnx)
    return write(
        tmp_path / "good.yaml",
        """
        upstream: {url: "http://127.0.0.1:9299"}
        models:
          ce: {path: models/ce}
        indices:
          - pattern: docs
          - pattern: logs-*
            rerank: false
    """,
    )


def test_check_config_ok(runner, tmp_path):
    path = good_config(tmp_path)
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: ok" in result.output
    assert "1 model(s), 2 index rule(s), upstream http://127.0.0.1:9299" in result.output


def test_check_config_lists_every_problem(runner, tmp_path):
    path = write(tmp_path / "bad.yaml", BAD_CONFIG.replace("model: nope", "window: 10"))
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code != 0
    assert "ok" not in result.output
    for words in (
        "error: invalid configuration",
        "upstream.url: url must start with http://",
        "server.rerank_timeout",
        "colour: Extra inputs",
        "window (600) is larger than max_window (500)",
    ):
        assert words in result.output, result.output


def test_check_config_reports_a_missing_model_file(runner, tmp_path):
    path = good_config(tmp_path, onnx=False)
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code != 0
    missing = (tmp_path / "models" / "ce" / "model.onnx").resolve()
    assert f"models.ce: {missing} does not exist" in result.output
    assert "tokenizer.json" not in result.output


@pytest.mark.parametrize("content", [None, "a: [unclosed\n"], ids=["missing", "invalid-yaml"])
def test_check_config_unreadable(runner, tmp_path, content):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(main, ["check-config", str(path)])
    assert result.exit_code != 0
    assert "error:" in result.output and "c.yaml" in result.output


def test_check_config_env_override(tmp_path):
    path = good_config(tmp_path)
    result = CliRunner(env={"ES_RERANK_UPSTREAM_URL": "https://env:9200"}).invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "upstream https://env:9200" in result.output


def test_serve_with_a_bad_config_does_not_start(runner, tmp_path, monkeypatch):
    import es_rerank.server

    started = []
    monkeypatch.setattr(es_rerank.server, "serve", lambda *a, **k: started.append((a, k)))
    path = write(tmp_path / "bad.yaml", "upstream: {url: 'localhost:9200'}\nextra: 1\n")
    result = runner.invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code != 0
    assert "url must start with http:// or https://" in result.output
    assert "extra: Extra inputs are not permitted" in result.output
    assert started == []


def test_serve_with_a_missing_config_does_not_start(runner, tmp_path, monkeypatch):
    import es_rerank.server

    started = []
    monkeypatch.setattr(es_rerank.server, "serve", lambda *a, **k: started.append((a, k)))
    result = runner.invoke(main, ["serve", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code != 0
    assert "cannot read config" in result.output
    assert started == []


def test_serve_passes_the_settings(runner, tmp_path, monkeypatch):
    import es_rerank.server

    started = []
    monkeypatch.setattr(es_rerank.server, "serve", lambda *a, **k: started.append((a, k)))
    result = runner.invoke(main, ["serve", "--config", str(good_config(tmp_path)), "--port", "8123"])
    assert result.exit_code == 0, result.output
    ((args, kwargs),) = started
    assert isinstance(args[0], Settings) and args[0].upstream.url == "http://127.0.0.1:9299"
    assert kwargs == {"host": None, "port": 8123, "log_level": "info"}
