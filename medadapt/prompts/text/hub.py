"""The local Hugging Face cache, read without the network: where it is, what a repository holds there, and a guard
that keeps the Hugging Face libraries offline while a model is built."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from ...core.errors import MedAdaptError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# what a Hugging Face repository named in an open_clip text config must hold in the cache, by the config's key
_TEXT_PARTS = {"hf_model_name": "text model", "hf_tokenizer_name": "tokenizer"}


def _offline_flags() -> list[tuple[object, str]]:
    """(module, attribute) of each offline switch a Hugging Face library computed from the environment when it
    was imported: setting the environment later does not reach them."""
    flags: list[tuple[object, str]] = []
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        return flags
    flags.append((hub_constants, "HF_HUB_OFFLINE"))  # what huggingface_hub.is_offline_mode() returns
    transformers_hub = sys.modules.get("transformers.utils.hub")  # imported later, it reads the environment
    if transformers_hub is not None and hasattr(transformers_hub, "_is_offline_mode"):  # transformers 4.x's own copy
        flags.append((transformers_hub, "_is_offline_mode"))
    return flags


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face libraries may not touch the network while a model is built here; a file they miss raises at
    once (an OSError) instead of being fetched. Everything switched is restored afterwards."""
    old_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    old_flags = [(module, attr, getattr(module, attr)) for module, attr in _offline_flags()]
    os.environ.update({k: "1" for k in _OFFLINE_ENV})
    for module, attr, _ in old_flags:
        setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in old_flags:
            setattr(module, attr, value)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _env_path(value: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(value)))


def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache that ``hf-hub:`` names are read from (nothing is downloaded).

    ``cache_dir`` if given, else ``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``
    (its older name), else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``
    or ``~/.cache/huggingface/hub``, as huggingface_hub resolves it -- read when
    called, so a changed environment is honoured.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return _env_path(os.environ[var])
    if os.environ.get("HF_HOME"):
        return _env_path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (_env_path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def find_snapshot(repo_id: str, cache: Path, needs: Callable[[Path], bool]) -> Path | None:
    """The cached snapshot of ``repo_id`` that has the files ``needs`` checks; refs/main first."""
    repo = repo_folder(cache, repo_id)
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo / "refs" / "main"
    candidates = [snaps / ref.read_text().strip()] if ref.is_file() else []
    candidates += sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((snap for snap in candidates if snap.is_dir() and needs(snap)), None)


def where(repo_id: str, cache: Path) -> str:
    return str(repo_folder(cache, repo_id) / "snapshots" / "<revision>")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def has_config(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def text_parts(text_cfg: dict) -> list[tuple[str, str, str]]:
    """(config key, role, repository) of each Hugging Face repository an open_clip text config reads from."""
    return [(key, role, str(text_cfg[key])) for key, role in _TEXT_PARTS.items() if text_cfg.get(key)]


def cached_text_parts(label: str, text_cfg: dict, cache: Path) -> dict[str, Path]:
    """The local folder of each Hugging Face repository an open_clip text config names (``hf_model_name``: the text
    model's config.json; ``hf_tokenizer_name``: its tokenizer files), by config key. A repository missing from the
    cache raises a :class:`MedAdaptError` naming it, the folder looked in and how to put it there."""
    found = {}
    for key, role, repo in text_parts(text_cfg):
        needs = has_config if key == "hf_model_name" else has_tokenizer
        local = Path(repo).expanduser()
        found[key] = local if local.is_dir() and needs(local) else find_snapshot(repo, cache, needs)
        if found[key] is None:
            raise MedAdaptError(
                f"{label} reads its {role} from the Hugging Face repository {repo}, which is not in the local "
                f"Hugging Face cache, and nothing is downloaded; looked in {where(repo, cache)}. On a machine with "
                f"internet run `huggingface-cli download {repo} --exclude \"*.bin\" \"*.safetensors\" \"*.pth\"` "
                f"(its config and tokenizer files; the weights come from your checkpoint), then copy the "
                f"models--* folder it fills into {cache} (or set HF_HOME / HF_HUB_CACHE)"
            )
    return found


__all__ = ["cached_text_parts", "find_snapshot", "hf_cache_dir", "offline", "text_parts", "where"]
