"""Hugging Face hub ids for SAEs and models: `user/repo`, optionally with a sub-folder
(`user/repo/saes/resid15_topk`). A hub id is read from the local cache when it is there, so
offline work needs no network; otherwise one quick request decides, before any long download
retries, whether the hub can be reached and the repository exists, and a failure is one line."""

from __future__ import annotations

import re
from pathlib import Path

from ctxsae_common.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.\-/]+)?$")
CHECK_TIMEOUT_S = 5.0
OFFLINE_HINT = "pass a local folder, or download it first on a machine with network access"


def is_hub_id(source: str | Path) -> bool:
    """Whether `source` reads as a hub id rather than a path: `user/repo[/sub/folder]`, not an
    existing path and not starting with '.', '/' or '~'."""
    text = str(source)
    return bool(HUB_ID.match(text)) and not Path(text).exists() and not text.startswith((".", "/", "~"))


def split_hub_id(source: str) -> tuple[str, str]:
    """(repo id, sub-folder or '') of a hub id."""
    user, repo, *sub = source.strip("/").split("/")
    return f"{user}/{repo}", "/".join(sub)


def check_reachable(repo_id: str, what: str) -> None:
    """Raise InputError unless the hub answers for `repo_id` within CHECK_TIMEOUT_S: offline mode,
    no connection, or no such repository each give one line."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        raise InputError(f"{what} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                         f"{OFFLINE_HINT}")
    try:
        response = get_session().head(f"{constants.ENDPOINT}/api/models/{repo_id}", timeout=CHECK_TIMEOUT_S)
    except (TypeError, AttributeError):
        raise
    except Exception as e:  # connection refused, DNS, timeout, proxy (requests or httpx): one meaning to the user
        raise InputError(f"{what} {repo_id!r}: cannot reach {constants.ENDPOINT} ({type(e).__name__}): "
                         f"{OFFLINE_HINT}") from None
    if response.status_code in (401, 404):
        raise InputError(f"{what} {repo_id!r}: no such repository on the hub (or it is private and no token is "
                         "set): check the id, or run `hf auth login`")


def check_available(source: str, what: str) -> None:
    """Return at once when the hub id `source` is in the local cache, else `check_reachable`: a
    model loader called next then downloads without first retrying an unreachable hub for a minute."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _ = split_hub_id(source)
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    check_reachable(repo_id, what)


def hub_folder(source: str, what: str = "SAE") -> Path:
    """The local folder of a hub id's files (its sub-folder when it names one), from the cache or
    downloaded; errors are one line."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, sub = split_hub_id(source)
    patterns = [f"{sub}/*"] if sub else None
    try:
        root = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        check_reachable(repo_id, what)
        try:
            root = snapshot_download(repo_id, allow_patterns=patterns)
        except Exception as e:
            raise InputError(f"{what} {source!r}: download failed ({str(e).splitlines()[0][:120]})") from None
    folder = Path(root) / sub
    if not folder.is_dir():
        raise InputError(f"{what} {source!r}: the repository has no folder {sub!r}: name a folder that holds "
                         "config.json")
    return folder


def push_folder(folder: str | Path, target: str, private: bool = False) -> str:
    """Upload `folder` to the hub id `target` (`user/repo[/sub/folder]`), creating the repository
    if needed; returns the repository's URL."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise InputError(f"cannot push to {target!r}: HF_HUB_OFFLINE is set: unset it on a machine with network access")
    repo_id, sub = split_hub_id(target)
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, path_in_repo=sub or None,
                          commit_message=f"Upload {Path(folder).name} with ctxsae push")
    except Exception as e:  # network, authentication, permissions: one line with the hub's reason
        raise InputError(f"cannot push to {target!r} ({str(e).splitlines()[0][:120]}): check the network and "
                         "`hf auth login`") from None
    return str(url)
