"""`es-rerank model`: pull (against a fake Hugging Face Hub on loopback), export (a tiny
random BERT, where torch + transformers are installed), optimize, quantize and check
(tiny real ONNX models), and the model directory's es-rerank-model.json."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner

from es_rerank.cli.model import model
from es_rerank.errors import ModelError
from es_rerank.reranker import OnnxReranker
from es_rerank.reranker.modeldir import (
    MODEL_CONFIG_FILE,
    ModelDirConfig,
    read_model_config,
    write_model_config,
)
from es_rerank.tools.models import (
    CHECK_PAIRS,
    check_model,
    export_model,
    optimize_model,
    quantize_model,
)
from es_rerank.tools.models._common import _activation, _head, _max_length

TESTS = Path(__file__).resolve().parents[2]
ROOT = TESTS.parent
if str(TESTS) not in sys.path:  # tests/ has no package marker; tinymodel lives there
    sys.path.insert(0, str(TESTS))

from tinymodel import build_tiny_model  # noqa: E402

TOKENIZER_JSON = ROOT / "demo" / "model" / "tokenizer.json"


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


needs_export_extra = pytest.mark.skipif(
    not (_installed("torch") and _installed("transformers")),
    reason="model export needs the export extra (torch, transformers): pip install 'es-rerank[export]'",
)
pytestmark = pytest.mark.skipif(not TOKENIZER_JSON.is_file(), reason=f"demo tokenizer not found at {TOKENIZER_JSON}")


def run(*args: str):
    return CliRunner().invoke(model, [str(a) for a in args], catch_exceptions=False)


def scores_of(model_dir: Path, onnx_file: str = "model.onnx", **kw) -> np.ndarray:
    """CHECK_PAIRS' scores, one call per query as the proxy makes them.

    (Dynamic int8 quantises activations per tensor, so its scores depend a little on
    which pairs share a batch: compare like with like.)
    """
    queries = list(dict.fromkeys(q for q, _ in CHECK_PAIRS))
    with OnnxReranker("t", model_dir / onnx_file, model_dir / "tokenizer.json", providers=["cpu"], **kw) as r:
        return np.concatenate([r.score(q, [p for q2, p in CHECK_PAIRS if q2 == q]) for q in queries])


needs_sympy = pytest.mark.skipif(
    not _installed("sympy"),
    reason="ONNX Runtime's transformer optimiser needs sympy: pip install 'es-rerank[tools]'",
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), tokenizer_json=TOKENIZER_JSON)


# -- es-rerank-model.json ---------------------------------------------------------------


def test_model_config_round_trip(tmp_path):
    config = ModelDirConfig(
        onnx_file="model.onnx", max_length=512, head="single", activation="sigmoid",
        source={"type": "hub", "repo_id": "a/b", "commit": "c" * 40},
        variants={"model.int8.onnx": {"kind": "int8-dynamic"}},
    )  # fmt: skip
    path = write_model_config(tmp_path, config)
    assert path == tmp_path / MODEL_CONFIG_FILE
    assert json.loads(path.read_text())["format"] == 1
    assert read_model_config(tmp_path) == config
    assert read_model_config(path) == config  # the file itself works too


def test_model_config_absent_is_none(tmp_path):
    assert read_model_config(tmp_path) is None
    assert read_model_config(tmp_path / "nowhere") is None


def test_model_config_defaults_and_unknown_keys(tmp_path):
    (tmp_path / MODEL_CONFIG_FILE).write_text('{"head": "two", "written_by_a_newer_minor": true}')
    config = read_model_config(tmp_path)
    assert config == ModelDirConfig(head="two")
    assert config.onnx_file == "model.onnx" and config.max_length is None and config.activation is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"format": 2}', "newer es-rerank"),
        ('{"head": "three", "max_length": 4}', "head must be one of auto, single, two"),
        ('{"max_length": "512"}', "max_length must be"),
        ('{"activation": "relu"}', "activation must be"),
        ('{"onnx_file": "../elsewhere/model.onnx"}', "inside the model directory"),
        ('{"onnx_file": "/abs/model.onnx"}', "inside the model directory"),
        ('{"variants": []}', "variants must be an object"),
    ],
)
def test_model_config_invalid(tmp_path, text, message):
    (tmp_path / MODEL_CONFIG_FILE).write_text(text)
    with pytest.raises(ModelError, match=re.escape(message)) as info:
        read_model_config(tmp_path)
    assert str(tmp_path / MODEL_CONFIG_FILE) in info.value.reason


def test_model_config_lists_every_problem(tmp_path):
    (tmp_path / MODEL_CONFIG_FILE).write_text('{"head": "three", "max_length": 4}')
    with pytest.raises(ModelError) as info:
        read_model_config(tmp_path)
    assert "head" in info.value.reason and "max_length" in info.value.reason


# -- what a checkpoint's JSON files say -------------------------------------------------------


def test_max_length_from_tokenizer_and_positions():
    assert _max_length({"max_position_embeddings": 512}, {"model_max_length": 256}) == 256
    assert _max_length({"max_position_embeddings": 2048}, None) == 512  # capped
    assert _max_length({"max_position_embeddings": 512}, {"model_max_length": int(1e30)}) == 512  # sentinel
    # RoBERTa-style positions start after the padding index: 514 -> 512, 130 -> 128
    assert _max_length({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1}, None) == 512
    assert _max_length({"model_type": "roberta", "max_position_embeddings": 130, "pad_token_id": 1}, None) == 128
    assert _max_length(None, None) is None


def test_head_from_labels():
    assert _head(1, "x") == "single" and _head(2, "x") == "two" and _head(None, "x") == "auto"
    with pytest.raises(ModelError, match="3 labels"):
        _head(3, "an NLI model")


@pytest.mark.parametrize(
    "config, st_config, expected",
    [
        ({}, {"model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.activation.Sigmoid"}, "sigmoid"),
        ({"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity", "version": "4.0.1"}}, None, "identity"),
        ({"sbert_ce_default_activation_function": "torch.nn.modules.activation.Sigmoid"}, None, "sigmoid"),
        ({"sbert_ce_default_activation_function": "torch.nn.modules.activation.Softmax"}, None, "softmax"),
        ({"sbert_ce_default_activation_function": "torch.nn.modules.activation.Tanh"}, None, None),
        ({"architectures": ["BertForSequenceClassification"]}, None, None),
    ],
)  # fmt: skip
def test_activation_from_sentence_transformers(config, st_config, expected):
    assert _activation(config, st_config) == expected


# -- a fake Hugging Face Hub --------------------------------------------------------------------


class FakeHub:
    """The Hub's HTTP surface that huggingface_hub's download code uses, on loopback.

    ``GET /api/models/{repo}/revision/{rev}`` (model_info: sha + siblings),
    ``HEAD|GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit`` and ``ETag``; ONNX
    files are served like LFS files: a 302 to another host (``localhost`` instead of
    ``127.0.0.1``, like a CDN) with ``X-Linked-Etag``/``X-Linked-Size``. Errors carry
    the Hub's ``X-Error-Code`` header.
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                hub._serve(self, body=True)

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], *, refs: tuple[str, ...] = ("main",)) -> str:
        """A commit of ``repo_id`` holding ``files``; the branch/tag names in ``refs`` point to it."""
        commit = hashlib.sha1(
            repr(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode() + repo_id.encode()
        ).hexdigest()
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        repo["commits"][commit] = files
        for ref in refs:
            repo["refs"][ref] = commit
        return commit

    def downloads(self, suffix: str) -> int:
        return sum(1 for method, path in self.requests if method == "GET" and path.endswith(suffix))

    def _serve(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, path))
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            data = self.blobs.get(m.group(1))
            if data is None:
                return self._send(handler, 404, {}, b"", body)
            return self._send(handler, 200, {"ETag": f'"{m.group(1)}"'}, data, body)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path):
            repo_id, revision = m.groups()
            commit, error = self._resolve(repo_id, revision)
            if error:
                return self._send(handler, 404, {"X-Error-Code": error}, b"{}", body)
            files = self.repos[repo_id]["commits"][commit]
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "siblings": [{"rfilename": name} for name in sorted(files)]}  # fmt: skip
            return self._send(handler, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo_id, revision, filename = m.groups()
            commit, error = self._resolve(repo_id, revision)
            if error:
                return self._send(handler, 404, {"X-Error-Code": error}, b"", body)
            data = self.repos[repo_id]["commits"][commit].get(filename)
            headers = {"X-Repo-Commit": commit}
            if data is None:
                return self._send(handler, 404, {**headers, "X-Error-Code": "EntryNotFound"}, b"", body)
            if filename.endswith((".onnx", "_data")):  # an LFS file: redirect to the "CDN"
                sha256 = hashlib.sha256(data).hexdigest()
                self.blobs[sha256] = data
                headers.update({
                    "Location": f"http://localhost:{self.port}/cdn/{sha256}",
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                })  # fmt: skip
                return self._send(handler, 302, headers, b"", body)
            headers["ETag"] = f'"{hashlib.sha1(data).hexdigest()}"'
            return self._send(handler, 200, headers, data, body)
        self._send(handler, 404, {}, b"", body)

    def _resolve(self, repo_id: str, revision: str) -> tuple[str | None, str | None]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, "RepoNotFound"
        commit = repo["refs"].get(revision, revision)
        if commit not in repo["commits"]:
            return None, "RevisionNotFound"
        return commit, None

    @staticmethod
    def _send(handler, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body and data:
            handler.wfile.write(data)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    fake = FakeHub()
    single = build_tiny_model(tmp_path_factory.mktemp("hub-single"), tokenizer_json=TOKENIZER_JSON, seed=1)
    two = build_tiny_model(tmp_path_factory.mktemp("hub-two"), tokenizer_json=TOKENIZER_JSON, head="two", seed=2)
    tokenizer = TOKENIZER_JSON.read_bytes()
    fake.main_commit = fake.add(
        "acme/tiny-ce",
        {
            "onnx/model.onnx": (single / "model.onnx").read_bytes(),
            "onnx/model_qint8_avx512.onnx": (two / "model.onnx").read_bytes(),
            "tokenizer.json": tokenizer,
            "config.json": json.dumps(
                {
                    "architectures": ["BertForSequenceClassification"],
                    "model_type": "bert",
                    "id2label": {"0": "LABEL_0"},
                    "max_position_embeddings": 512,
                    "sentence_transformers": {
                        "activation_fn": "torch.nn.modules.activation.Sigmoid",
                        "version": "4.1.0",
                    },
                }
            ).encode(),  # fmt: skip
            "tokenizer_config.json": json.dumps({"model_max_length": 384}).encode(),
            "README.md": b"# tiny cross-encoder\n",
            "model.safetensors": b"not downloaded",
        },
    )
    # An older tag: a two-logit RoBERTa-style model at the repository's root, old sentence-transformers key.
    fake.v1_commit = fake.add(
        "acme/tiny-ce",
        {
            "model.onnx": (two / "model.onnx").read_bytes(),
            "tokenizer.json": tokenizer,
            "config.json": json.dumps(
                {
                    "model_type": "xlm-roberta",
                    "max_position_embeddings": 514,
                    "pad_token_id": 1,
                    "id2label": {"0": "not_relevant", "1": "relevant"},
                    "sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity",
                }
            ).encode(),  # fmt: skip
        },
        refs=("v1",),
    )
    fake.add("acme/no-tokenizer", {"onnx/model.onnx": (single / "model.onnx").read_bytes()})
    # A model too big for one protobuf keeps its weights in an external-data file beside it.
    import onnx

    external = tmp_path_factory.mktemp("hub-external")
    proto = onnx.load(str(single / "model.onnx"))
    onnx.save(proto, str(external / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx_data")  # fmt: skip
    fake.add("acme/external", {
        "onnx/model.onnx": (external / "model.onnx").read_bytes(),
        "onnx/model.onnx_data": (external / "model.onnx_data").read_bytes(),
        "tokenizer.json": tokenizer,
    })  # fmt: skip
    fake.add("acme/many-onnx", {"onnx/a.onnx": b"x", "onnx/b.onnx": b"y", "tokenizer.json": tokenizer})
    fake.sources = {"single": single, "two": two}
    yield fake
    fake.close()


def test_pull_fetches_through_huggingface_hub(hub, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = run("pull", "acme/tiny-ce", "--out", out, "--endpoint", hub.url, "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    assert f"commit {hub.main_commit}" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", MODEL_CONFIG_FILE, "model.onnx", "tokenizer.json"]
    assert (out / "model.onnx").read_bytes() == (hub.sources["single"] / "model.onnx").read_bytes()
    config = read_model_config(out)
    assert config.onnx_file == "model.onnx"
    assert config.max_length == 384  # tokenizer_config's model_max_length beats 512 positions
    assert config.head == "single" and config.activation == "sigmoid"
    assert dict(config.source) == {
        "type": "hub", "repo_id": "acme/tiny-ce", "revision": "main",
        "commit": hub.main_commit, "onnx_file": "onnx/model.onnx",
    }  # fmt: skip
    # the real download path: model_info, HEAD on resolve, the LFS redirect to the "CDN", the cache layout
    assert ("GET", "/api/models/acme/tiny-ce/revision/main") in hub.requests
    assert ("HEAD", "/acme/tiny-ce/resolve/main/onnx/model.onnx") in hub.requests
    assert hub.downloads("/cdn/" + hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()) == 1
    assert hub.downloads("model_qint8_avx512.onnx") == 0 and hub.downloads("model.safetensors") == 0
    assert (cache / "models--acme--tiny-ce" / "refs" / "main").read_text() == hub.main_commit
    # the directory serves, and scores as the repository's model does
    np.testing.assert_allclose(scores_of(out), scores_of(hub.sources["single"]), atol=1e-6)


def test_pull_revision_and_root_onnx(hub, tmp_path):
    out = tmp_path / "v1"
    result = run(
        "pull", "acme/tiny-ce", "--revision", "v1", "--out", out, "--endpoint", hub.url, "--cache-dir", tmp_path / "c"
    )
    assert result.exit_code == 0, result.output
    config = read_model_config(out)
    assert config.source["commit"] == hub.v1_commit and config.source["onnx_file"] == "model.onnx"
    assert config.head == "two" and config.activation == "identity" and config.max_length == 512
    with OnnxReranker("v1", out / config.onnx_file, out / "tokenizer.json", providers=["cpu"]) as reranker:
        assert reranker.head == "two"


def test_pull_named_onnx_file_keeps_its_name(hub, tmp_path):
    out = tmp_path / "q"
    result = run("pull", "acme/tiny-ce", "--onnx-file", "onnx/model_qint8_avx512.onnx", "--out", out,
                 "--endpoint", hub.url, "--cache-dir", tmp_path / "c")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = read_model_config(out)
    assert config.onnx_file == "model_qint8_avx512.onnx" and (out / "model_qint8_avx512.onnx").is_file()
    assert not (out / "model.onnx").exists()


def test_pull_brings_external_data_along(hub, tmp_path):
    out = tmp_path / "out"
    result = run("pull", "acme/external", "--out", out, "--endpoint", hub.url, "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx_data").stat().st_size > 100 * (out / "model.onnx").stat().st_size  # the weights
    config = read_model_config(out)
    assert config.head == "auto" and config.max_length is None and config.activation is None  # no config.json
    np.testing.assert_allclose(scores_of(out), scores_of(hub.sources["single"]), atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["acme/missing"], "repository acme/missing not found"),
        (["acme/tiny-ce", "--revision", "v9"], "has no revision 'v9'"),
        (
            ["acme/tiny-ce", "--onnx-file", "onnx/nope.onnx"],
            "ONNX files there: onnx/model.onnx, onnx/model_qint8_avx512.onnx",
        ),
        (["acme/no-tokenizer"], "has no tokenizer.json"),
        (["acme/many-onnx"], "pick one with --onnx-file: onnx/a.onnx, onnx/b.onnx"),
    ],
)
def test_pull_errors_are_one_clear_line(hub, tmp_path, args, message):
    result = run("pull", *args, "--out", tmp_path / "out", "--endpoint", hub.url, "--cache-dir", tmp_path / "c")
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output


def test_pull_does_not_replace_a_model_without_force(hub, tmp_path):
    out = tmp_path / "out"
    common = ["--out", out, "--endpoint", hub.url, "--cache-dir", tmp_path / "c"]
    assert run("pull", "acme/tiny-ce", *common).exit_code == 0
    again = run("pull", "acme/tiny-ce", "--revision", "v1", *common)
    assert again.exit_code == 1 and "--force" in again.output
    assert run("pull", "acme/tiny-ce", "--revision", "v1", "--force", *common).exit_code == 0
    assert read_model_config(out).head == "two"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "es_rerank.cli", "--log-level", "warning", "model", *args],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_pull_honours_hf_endpoint_and_offline_mode(hub, tmp_path):
    """Environment variables, in a fresh process, as huggingface_hub reads them at import."""
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    online = _cli(["pull", "acme/tiny-ce", "--out", str(tmp_path / "a")], env)
    assert online.returncode == 0, online.stderr
    seen = len(hub.requests)

    offline = _cli(["pull", "acme/tiny-ce", "--out", str(tmp_path / "b")], {**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert len(hub.requests) == seen  # nothing asked of the Hub: all from the cache
    a, b = read_model_config(tmp_path / "a"), read_model_config(tmp_path / "b")
    assert a == b and b.source["commit"] == hub.main_commit and b.max_length == 384
    assert (tmp_path / "b" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()

    missing = _cli(
        ["pull", "acme/tiny-ce", "--revision", "v1", "--out", str(tmp_path / "c")], {**env, "HF_HUB_OFFLINE": "1"}
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: cannot fetch") and "not in the local cache" in missing.stderr
    assert "Traceback" not in missing.stderr


# -- bad model directories ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "optimize", "quantize"])
def test_directory_without_tokenizer_is_one_clear_error(tmp_path, tiny_dir, command):
    (tmp_path / "model.onnx").write_bytes((tiny_dir / "model.onnx").read_bytes())
    result = run(command, tmp_path)
    assert result.exit_code == 1
    assert result.output == (
        f"error: model directory {tmp_path} has no tokenizer.json: a model directory holds model.onnx, "
        f"tokenizer.json and {MODEL_CONFIG_FILE} (`es-rerank model pull` or `export` makes one)\n"
    )


def test_missing_directory_and_missing_onnx(tmp_path, tiny_dir):
    result = run("check", tmp_path / "nowhere")
    assert result.exit_code == 1 and result.output == f"error: model directory {tmp_path / 'nowhere'} does not exist\n"
    (tmp_path / "tokenizer.json").write_bytes(TOKENIZER_JSON.read_bytes())
    (tmp_path / "other.onnx").write_bytes((tiny_dir / "model.onnx").read_bytes())
    result = run("check", tmp_path)
    assert result.exit_code == 1 and "has no model.onnx (ONNX files there: other.onnx)" in result.output


# -- check ---------------------------------------------------------------------------------------


def test_check_reports_provider_latency_and_reference(tiny_dir):
    result = run("check", tiny_dir, "--reference", tiny_dir, "--repeats", "2")
    assert result.exit_code == 0, result.output
    assert "provider: CPUExecutionProvider" in result.output
    assert re.search(r"latency: load \d+ ms; 8 pairs in [\d.]+ ms median of 2", result.output)
    assert "max |diff| 0; same order: yes" in result.output


def test_check_times_distinct_pairs_without_caches(tiny_dir, monkeypatch):
    # Timed runs that repeat the warm-up's pairs hit the score cache: 147,954 "pairs/s" on 2 cores.
    import es_rerank.tools.models.check as modeltools

    seen: list[tuple[tuple[str, str], ...]] = []
    real = modeltools._score_pairs

    def spy(reranker, pairs):
        seen.append(tuple(pairs))
        assert reranker.cache.maxsize == 0 and reranker.token_cache_info()["size"] == 0
        return real(reranker, pairs)

    monkeypatch.setattr(modeltools, "_score_pairs", spy)
    checked = check_model(tiny_dir, repeats=3)
    assert checked.cache_hits == 0 and checked.runs == 3
    assert len(seen) == 4 and len(set(seen)) == 4  # warm-up + 3 timed runs, no two alike
    assert not set(seen[0]) & set(seen[1]) and not set(seen[1]) & set(seen[2])
    np.testing.assert_allclose(checked.scores, scores_of(tiny_dir), atol=1e-6)  # reported scores: the pairs as given
    assert "distinct pairs, no score or token cache" in run("check", tiny_dir, "--repeats", "1").output


def test_check_against_another_model_and_tolerance(tiny_dir, tmp_path):
    other = build_tiny_model(tmp_path / "other", tokenizer_json=TOKENIZER_JSON, seed=7)
    checked = check_model(tiny_dir, reference=other / "model.onnx", repeats=1)
    assert checked.max_abs_diff > 0.01 and checked.reference == other / "model.onnx"
    np.testing.assert_allclose(checked.scores, scores_of(tiny_dir), atol=1e-6)
    failing = run("check", tiny_dir, "--reference", other / "model.onnx", "--tolerance", "0.001", "--repeats", "1")
    assert failing.exit_code == 1 and "above the tolerance 0.001" in failing.output


# -- optimize and quantize on the tiny model --------------------------------------------------------


@pytest.fixture()
def work_dir(tiny_dir, tmp_path) -> Path:
    for name in ("model.onnx", "tokenizer.json"):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    return tmp_path


@needs_sympy
def test_optimize_tiny_model(work_dir):
    result = run("optimize", work_dir)
    assert result.exit_code == 0, result.output
    assert (work_dir / "model.opt.onnx").is_file()
    np.testing.assert_allclose(scores_of(work_dir, "model.opt.onnx"), scores_of(work_dir), atol=1e-5)
    config = read_model_config(work_dir)  # written for the hand-made directory
    assert config.onnx_file == "model.onnx" and config.variants["model.opt.onnx"]["kind"] == "optimized"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"per_channel": True, "reduce_range": True},
        pytest.param({"fusions_first": True, "op_types": ["MatMul"]}, marks=needs_sympy),
        {"weight_type": "quint8", "op_types": ["MatMul", "Gather"]},
        pytest.param({"preprocess": True}, marks=needs_sympy),
    ],
)
def test_quantize_tiny_model(work_dir, options):
    result = quantize_model(work_dir, **options)
    assert result.output == work_dir / "model.int8.onnx"
    reference = scores_of(work_dir)
    quantized = scores_of(work_dir, "model.int8.onnx")
    assert result.max_abs_diff == pytest.approx(float(np.max(np.abs(quantized - reference))), abs=1e-6)
    assert result.max_abs_diff < 0.05 * float(np.max(np.abs(reference)))
    variant = read_model_config(work_dir).variants["model.int8.onnx"]
    assert variant["kind"] == "int8-dynamic" and variant["from"] == "model.onnx"
    assert variant["per_channel"] == options.get("per_channel", False)
    assert variant["fusions_first"] == options.get("fusions_first", False)


def test_quantize_cli(work_dir):
    result = run("quantize", work_dir, "--per-channel", "--op-types", "MatMul,Gather", "--output", "m8.onnx")
    assert result.exit_code == 0, result.output
    assert re.search(r"wrote .*m8\.onnx \([\d.]+ MB -> [\d.]+ MB; max \|diff\| ", result.output)
    assert read_model_config(work_dir).variants["m8.onnx"]["op_types"] == ["MatMul", "Gather"]
    checked = run("check", work_dir, "--onnx-file", "m8.onnx", "--reference", work_dir / "model.onnx", "--repeats", "1")
    assert checked.exit_code == 0 and "same order: yes" in checked.output


@needs_sympy
def test_quantize_cli_defaults_to_the_recipe(work_dir):
    from es_rerank.reranker.quantize import INT8_RECIPE

    result = run("quantize", work_dir)
    assert result.exit_code == 0, result.output
    variant = read_model_config(work_dir).variants["model.int8.onnx"]
    assert variant["per_channel"] is INT8_RECIPE["per_channel"] is True
    assert variant["fusions_first"] is INT8_RECIPE["fuse"]
    assert variant["op_types"] == list(INT8_RECIPE["op_types"])
    assert variant["reduce_range"] is INT8_RECIPE["reduce_range"]


def test_optimize_without_its_dependencies_names_the_extra(work_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "sympy", None)  # import sympy -> ImportError
    result = run("optimize", work_dir)
    assert result.exit_code == 1 and result.output == "error: sympy not installed: pip install 'es-rerank[tools]'\n"
    with pytest.raises(ModelError, match="sympy"):
        quantize_model(work_dir, fusions_first=True)
    assert quantize_model(work_dir).max_abs_diff >= 0  # plain dynamic quantisation does not need it


def test_quantize_rejects_unknown_mode(work_dir):
    with pytest.raises(ModelError, match="mode 'static' is not supported"):
        quantize_model(work_dir, mode="static")  # type: ignore[arg-type]
    assert run("quantize", work_dir, "--mode", "static").exit_code == 2  # click's usage error


# -- export (needs the export extra) -------------------------------------------------------------


def test_export_without_the_extra_names_it(tmp_path, monkeypatch):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ModelError, match=re.escape("pip install 'es-rerank[export]'")):
        export_model(hf, tmp_path / "out")
    result = run("export", hf, tmp_path / "out2")
    assert result.exit_code == 1 and "es-rerank[export]" in result.output


def test_export_rejects_a_checkpoint_without_classification_head(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["BertModel"]}')
    result = run("export", hf, tmp_path / "out")
    assert result.exit_code == 1 and "*ForSequenceClassification" in result.output
    assert run("export", tmp_path / "empty", tmp_path / "out").output.startswith("error: ")


WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "on",
    "for",
    "with",
    "how",
    "do",
    "does",
    "what",
    "vitamin",
    "d",
    "deficiency",
    "risk",
    "multiple",
    "sclerosis",
    "young",
    "adults",
    "smoking",
    "obesity",
    "low",
    "vaccines",
    "train",
    "immune",
    "system",
    "antigen",
    "memory",
    "cells",
    "form",
    "antibodies",
    "made",
    "after",
    "vaccination",
    "recognise",
    "pathogen",
    "later",
    "exposure",
    "football",
    "clubs",
    "spent",
    "record",
    "sums",
    "transfers",
    "this",
    "summer",
    "stock",
    "markets",
    "fell",
    "sharply",
    "monday",
    "harvest",
    "was",
    "good",
    "year",
    "village",
    "celebrated",
]


def build_tiny_bert(out: Path, *, num_labels: int, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT cross-encoder checkpoint with a tiny WordPiece vocabulary."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(dict.fromkeys(WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789.,")))
    vocab_list = specials + pieces + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##s", "##ing", "##ed"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab_list) + "\n")
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
    }))  # fmt: skip
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(vocab_list), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
        initializer_range=0.2,  # logits of order 1, so 1e-4 is a real test
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).eval().save_pretrained(str(out))
    return out


def torch_logits(hf_dir: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    import torch
    import transformers

    reference = transformers.BertForSequenceClassification.from_pretrained(str(hf_dir)).float().eval()
    with torch.no_grad():
        return reference(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()


def padded_batch(tokenizer_json: Path, pairs, max_length: int = 100) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.enable_truncation(max_length, strategy="only_second")
    tokenizer.enable_padding(pad_id=0)
    encodings = tokenizer.encode_batch(list(pairs))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


@pytest.fixture(scope="module", params=[1, 2], ids=["one-label", "two-labels"])
def exported(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"bert{request.param}")
    hf = build_tiny_bert(base / "hf", num_labels=request.param)
    result = run("export", hf, base / "onnx")
    assert result.exit_code == 0, result.output
    return request.param, hf, base / "onnx"


@needs_export_extra
def test_export_matches_pytorch(exported):
    import onnx
    import onnxruntime as ort

    num_labels, hf, out = exported
    proto = onnx.load(str(out / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        (name, "tensor(int64)", ["batch", "sequence"]) for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", ["batch", num_labels])]

    # batches of other sizes and lengths than the traced one, with padding
    for pairs in (CHECK_PAIRS, CHECK_PAIRS[4:5], CHECK_PAIRS[1:4] * 3):
        batch = padded_batch(out / "tokenizer.json", pairs)
        expected = torch_logits(hf, batch)
        if len(pairs) > 1:
            assert float(np.std(expected)) > 0.05  # the random model tells pairs apart
        (got,) = session.run(["logits"], batch)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    config = read_model_config(out)
    assert config.head == ("single" if num_labels == 1 else "two")
    assert config.max_length == 128  # 128 positions beat the tokenizer's 512
    assert config.source["type"] == "export" and config.source["opset"] == 17
    assert sorted(p.name for p in out.iterdir()) == ["config.json", MODEL_CONFIG_FILE, "model.onnx", "tokenizer.json"]


@needs_export_extra
def test_exported_directory_scores_like_pytorch(exported):
    num_labels, hf, out = exported
    config = read_model_config(out)
    with OnnxReranker("bert", out / "model.onnx", out / "tokenizer.json", providers=["cpu"],
                      max_length=config.max_length, head=config.head) as reranker:  # fmt: skip
        scores = np.concatenate([reranker.score(q, [p]) for q, p in CHECK_PAIRS])
    logits = np.concatenate(
        [torch_logits(hf, padded_batch(out / "tokenizer.json", [pair], config.max_length)) for pair in CHECK_PAIRS]
    )
    expected = logits[:, 0] if num_labels == 1 else logits[:, 1] - logits[:, 0]
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


@needs_export_extra
def test_export_refuses_to_overwrite(exported, tmp_path):
    _, hf, out = exported
    result = run("export", hf, out)
    assert result.exit_code == 1 and "--force" in result.output


@needs_export_extra
def test_optimize_fuses_exported_bert(exported, tmp_path):
    import onnx

    num_labels, hf, out = exported
    work = tmp_path / "m"
    work.mkdir()
    for p in out.iterdir():
        (work / p.name).write_bytes(p.read_bytes())
    result = optimize_model(work, fp16=True)
    # the TorchScript export of transformers' eager attention is what ORT's BERT fusions expect
    # residual Add + LayerNormalization stay apart for CPU (faster there than SkipLayerNormalization)
    assert result.fused_ops.get("Attention") == 2 and result.fused_ops.get("LayerNormalization") == 4, result.fused_ops
    assert result.max_abs_diff < 1e-4
    np.testing.assert_allclose(
        scores_of(work, "model.opt.onnx", max_length=128), scores_of(work, max_length=128), atol=1e-4
    )
    half = onnx.load(str(work / "model.fp16.onnx"))
    assert [(i.name, i.type.tensor_type.elem_type) for i in half.graph.input] == [
        (n, onnx.TensorProto.INT64) for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    assert [(o.name, o.type.tensor_type.elem_type) for o in half.graph.output] == [("logits", onnx.TensorProto.FLOAT)]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    if result.fp16_max_abs_diff is not None:  # where this machine's CPU provider runs the fp16 kernels
        assert result.fp16_max_abs_diff < 0.05
    variants = read_model_config(work).variants
    assert variants["model.fp16.onnx"]["kind"] == "fp16" and variants["model.opt.onnx"]["fused"] == result.fused_ops


@needs_export_extra
def test_quantize_exported_bert_with_fusions_first(exported, tmp_path):
    num_labels, hf, out = exported
    work = tmp_path / "m"
    work.mkdir()
    for p in out.iterdir():
        (work / p.name).write_bytes(p.read_bytes())
    plain = quantize_model(work, output="plain.int8.onnx")
    fused = quantize_model(work, fusions_first=True, per_channel=True)
    prepared = quantize_model(
        work, fusions_first=True, preprocess=True, output="prepared.int8.onnx"
    )  # torch brings sympy
    reference = scores_of(work, max_length=128)
    for result in (plain, fused, prepared):
        got = scores_of(work, result.output.name, max_length=128)
        assert float(np.max(np.abs(got - reference))) == pytest.approx(result.max_abs_diff, abs=1e-6)
        assert result.max_abs_diff < 0.1 * float(np.max(np.abs(reference))) + 0.05


def test_head_count_is_read_from_the_checkpoint_beside_the_onnx_file(tmp_path):
    """A model folder whose Hugging Face checkpoint sits under hf/ (as the shared model
    keeps it): without its head count the attention fusion is skipped, and the int8 file
    runs its attention in fp32."""
    from es_rerank.tools.models._common import _ModelDir
    from es_rerank.tools.models.optimize import _heads_and_hidden

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"num_attention_heads": 12, "hidden_size": 384}))
    md = _ModelDir(path=tmp_path, onnx=tmp_path / "model.onnx", tokenizer=tmp_path / "tokenizer.json", config=None)
    assert _heads_and_hidden(md, None, None) == (12, 384)
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 6, "hidden_size": 192}))
    assert _heads_and_hidden(md, None, None) == (6, 192)  # the folder's own config wins
    assert _heads_and_hidden(md, 4, 64) == (4, 64)  # and the arguments over both
