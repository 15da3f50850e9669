"""Fetch a cross-encoder's ONNX file and tokenizer from the Hugging Face Hub into a model directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...errors import ModelError
from ...reranker.modeldir import (
    MODEL_CONFIG_FILE,
    ModelDirConfig,
    write_model_config,
)
from ._common import (
    DEFAULT_ONNX_FILES,
    HF_CONFIG_FILE,
    ST_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    _check_target,
    _describe,
    _import_hub,
    _install_file,
    _read_json,
    logger,
)


@dataclass(frozen=True)
class PullResult:
    """What :func:`pull_model` fetched and wrote."""

    model_dir: Path
    repo_id: str
    revision: str
    commit: str | None
    repo_onnx_file: str  # path of the ONNX file in the repository
    files: list[str]  # files written to model_dir
    config: ModelDirConfig


def _hub_errors() -> dict[str, type[BaseException]]:
    import importlib

    modules = []
    for name in ("huggingface_hub.errors", "huggingface_hub.utils"):  # errors: 0.23+; utils: older
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    names = (
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "GatedRepoError",
        "EntryNotFoundError",
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "HfHubHTTPError",
    )
    found: dict[str, type[BaseException]] = {}
    for name in names:
        error = next((getattr(m, name) for m in modules if hasattr(m, name)), None)
        # A class that matches nothing, where an old huggingface_hub lacks one of them.
        found[name] = error if isinstance(error, type) else type(name, (Exception,), {})
    return found


def _commit_of(path: Path, filename: str) -> str | None:
    """The commit a cached file belongs to: ``.../snapshots/<commit>/<filename>``."""
    snapshot = path.parents[len(PurePosixPath(filename).parts) - 1]
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def _pick_onnx(listing: Sequence[str], requested: str | None, repo_id: str) -> str:
    onnx_files = sorted(f for f in listing if f.endswith(".onnx"))
    if requested:
        if requested not in listing:
            raise ModelError(
                f"{repo_id} has no {requested}"
                + (f"; ONNX files there: {', '.join(onnx_files)}" if onnx_files else "; it has no ONNX file")
            )
        return requested
    for candidate in DEFAULT_ONNX_FILES:
        if candidate in listing:
            return candidate
    if len(onnx_files) == 1:
        return onnx_files[0]
    if onnx_files:
        raise ModelError(
            f"{repo_id} has several ONNX files and none is {' or '.join(DEFAULT_ONNX_FILES)}; "
            f"pick one with --onnx-file: {', '.join(onnx_files)}"
        )
    raise ModelError(
        f"{repo_id} has no ONNX file (looked for {', '.join(DEFAULT_ONNX_FILES)}); "
        "download the checkpoint and use `es-rerank model export` instead"
    )


def _data_files(listing: Sequence[str], onnx_file: str) -> list[str]:
    """External-data files saved beside an ONNX file (``model.onnx_data``, ``model.onnx.data``...)."""
    return sorted(f for f in listing if f != onnx_file and f.startswith((onnx_file + "_data", onnx_file + ".data")))


def pull_model(
    repo_id: str,
    *,
    revision: str | None = None,
    out_dir: Path | None = None,
    onnx_file: str | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    force: bool = False,
) -> PullResult:
    """Fetch a cross-encoder's ONNX file and tokenizer.json from a Hugging Face repository.

    Files go through huggingface_hub's own cache (``HF_HOME`` / ``HF_HUB_CACHE``, or
    ``cache_dir``), so ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` work as they do
    for any Hugging Face tool: offline, or when the Hub cannot be reached, a revision
    pulled before comes from the cache. The repository's ``config.json``,
    ``tokenizer_config.json`` and ``config_sentence_transformers.json`` (where present)
    give max_length, head and activation for ``es-rerank-model.json``.

    ``onnx_file`` is a path in the repository; by default ``onnx/model.onnx``, then
    ``model.onnx``. It keeps its file name in ``out_dir`` (default
    ``models/<owner>--<name>``), beside its external-data file if it has one.

    Long on purpose: the download's cases (ONNX file present, exported, tokenizer, card) in the order the Hub is asked.
    """
    hub = _import_hub()
    errors = _hub_errors()
    revision = revision or "main"
    out_dir = Path(out_dir) if out_dir is not None else Path("models") / repo_id.replace("/", "--")
    _check_target(out_dir, force)

    listing: list[str] | None = None
    commit: str | None = None
    try:
        info = hub.HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision)
        listing = [s.rfilename for s in (info.siblings or [])]
        commit = info.sha
    except errors["RevisionNotFoundError"]:
        raise ModelError(f"{repo_id} has no revision {revision!r}") from None
    except (errors["RepositoryNotFoundError"], errors["GatedRepoError"]) as exc:
        raise ModelError(
            f"repository {repo_id} not found or not accessible "
            f"({type(exc).__name__}; a private or gated one needs HF_TOKEN or --token)"
        ) from None
    except errors["OfflineModeIsEnabled"]:
        logger.info("offline mode (HF_HUB_OFFLINE): using the local Hugging Face cache")
    except Exception as exc:  # connection refused, timeouts, Hub errors: fall back to the cache
        logger.warning("cannot list %s (%s: %s); trying the local cache", repo_id, type(exc).__name__, exc)

    def fetch(filename: str, *, required: bool) -> Path | None:
        try:
            path = hub.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                endpoint=endpoint,
                token=token,
            )
        except (errors["EntryNotFoundError"], errors["LocalEntryNotFoundError"]) as exc:
            if not required:
                return None
            where = " (not in the local cache, and the Hub is offline or unreachable)" if listing is None else ""
            raise ModelError(f"cannot fetch {filename} from {repo_id}@{revision}{where}: {exc}") from None
        except errors["RevisionNotFoundError"]:
            raise ModelError(f"{repo_id} has no revision {revision!r}") from None
        except (errors["RepositoryNotFoundError"], errors["GatedRepoError"]) as exc:
            raise ModelError(f"repository {repo_id} not found or not accessible ({type(exc).__name__})") from None
        except errors["HfHubHTTPError"] as exc:
            raise ModelError(f"cannot fetch {filename} from {repo_id}: {exc}") from None
        return Path(path)

    if listing is not None:
        repo_onnx = _pick_onnx(listing, onnx_file, repo_id)
        onnx_dir = str(PurePosixPath(repo_onnx).parent)
        tokenizer_candidates = [TOKENIZER_FILE] + ([f"{onnx_dir}/{TOKENIZER_FILE}"] if onnx_dir != "." else [])
        tokenizer_name = next((t for t in tokenizer_candidates if t in listing), None)
        if tokenizer_name is None:
            raise ModelError(
                f"{repo_id} has no tokenizer.json (es-rerank needs a fast tokenizer's tokenizer.json); "
                "download the checkpoint and use `es-rerank model export` instead"
            )
        data_names = _data_files(listing, repo_onnx)
        optional = [n for n in (HF_CONFIG_FILE, TOKENIZER_CONFIG_FILE, ST_CONFIG_FILE) if n in listing]
        onnx_path = fetch(repo_onnx, required=True)
        tokenizer_path = fetch(tokenizer_name, required=True)
    else:
        # No listing: try the usual names against the cache, as huggingface_hub does offline.
        candidates = [onnx_file] if onnx_file else list(DEFAULT_ONNX_FILES)
        onnx_path = None
        repo_onnx = candidates[0]
        for candidate in candidates:
            onnx_path = fetch(candidate, required=candidate == candidates[-1])
            if onnx_path is not None:
                repo_onnx = candidate
                break
        onnx_dir = str(PurePosixPath(repo_onnx).parent)
        tokenizer_name = TOKENIZER_FILE
        tokenizer_path = fetch(tokenizer_name, required=onnx_dir == ".")
        if tokenizer_path is None:
            tokenizer_name = f"{onnx_dir}/{TOKENIZER_FILE}"
            tokenizer_path = fetch(tokenizer_name, required=True)
        data_names = [repo_onnx + "_data", repo_onnx + ".data"]
        optional = [HF_CONFIG_FILE, TOKENIZER_CONFIG_FILE, ST_CONFIG_FILE]
    assert onnx_path is not None and tokenizer_path is not None

    data_paths = {name: fetch(name, required=listing is not None) for name in data_names}
    extras = {name: fetch(name, required=False) for name in optional}

    fetched = [(repo_onnx, onnx_path), (tokenizer_name, tokenizer_path)]
    fetched += [(n, p) for n, p in {**data_paths, **extras}.items() if p is not None]
    commits = {c for c in (_commit_of(p, n) for n, p in fetched) if c}
    if len(commits) > 1 or (commit and commits and commits != {commit}):
        raise ModelError(f"{repo_id}@{revision} changed while it was being pulled; run the pull again")
    commit = commit or (commits.pop() if commits else None)

    hf_config = _read_json(extras.get(HF_CONFIG_FILE))
    tok_config = _read_json(extras.get(TOKENIZER_CONFIG_FILE))
    st_config = _read_json(extras.get(ST_CONFIG_FILE))
    max_length, head, activation = _describe(hf_config, tok_config, st_config, origin=repo_id)

    onnx_name = PurePosixPath(repo_onnx).name
    written = [onnx_name, TOKENIZER_FILE]
    out_dir.mkdir(parents=True, exist_ok=True)
    _install_file(onnx_path, out_dir / onnx_name)
    for name, path in data_paths.items():
        if path is not None:
            _install_file(path, out_dir / PurePosixPath(name).name)
            written.append(PurePosixPath(name).name)
    _install_file(tokenizer_path, out_dir / TOKENIZER_FILE)
    if extras.get(HF_CONFIG_FILE):
        _install_file(extras[HF_CONFIG_FILE], out_dir / HF_CONFIG_FILE)  # type: ignore[arg-type]
        written.append(HF_CONFIG_FILE)
    source = {"type": "hub", "repo_id": repo_id, "revision": revision, "commit": commit, "onnx_file": repo_onnx}
    config = ModelDirConfig(onnx_file=onnx_name, max_length=max_length, head=head, activation=activation, source=source)
    write_model_config(out_dir, config)
    written.append(MODEL_CONFIG_FILE)
    logger.info("pulled %s@%s (%s) into %s", repo_id, revision, commit, out_dir)
    return PullResult(out_dir, repo_id, revision, commit, repo_onnx, written, config)
