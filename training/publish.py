"""Push a finished release folder to the Hugging Face Hub in one commit, with an allow-list of files."""

from __future__ import annotations

import re
from pathlib import Path

import importlib

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network errors of the HTTP client huggingface_hub uses (httpx in 1.x, httpx2 in 2.x)."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


NETWORK_ERRORS = (HfHubHTTPError, OSError, ValueError, *_transport_errors())

# Everything a release carries (see DESIGN.md); checkpoints, logs and anything else stay local.
ALLOW_PATTERNS = ["model.safetensors", "config.json", "README.md", "misclassified.safetensors", "*.png"]
REQUIRED_FILES = ("model.safetensors", "config.json", "README.md")
_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PublishError(RuntimeError):
    """A push that did not happen; the message is one line and says how to retry."""


def check_repo_id(repo_id: str) -> str:
    """Refuse anything that is not 'owner/name' before any work is done."""
    if not _REPO_ID.match(repo_id or "") or ".." in repo_id or repo_id.endswith((".git", "-", ".")):
        raise ValueError(
            f"--push-to-hub must be 'owner/name' (letters, digits, '-', '_', '.'), got {repo_id!r}"
        )
    return repo_id


def release_files(folder: str | Path) -> list[str]:
    """The files of `folder` that the allow-list uploads, after checking the release is complete."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PublishError(f"{folder} is not a complete release: missing {missing}")
    return sorted(p.name for p in folder.iterdir() if p.is_file() and any(p.match(g) for g in ALLOW_PATTERNS))


def redact(text: str, token: str | None = None) -> str:
    """Remove the token in use (argument, HF_TOKEN or saved login) and anything shaped like one."""
    for secret in (token, get_token()):
        if secret:
            text = text.replace(secret, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


def retry_command(folder: str | Path, repo_id: str, private: bool) -> str:
    """The command that re-pushes the folder."""
    return f"resnet-cifar-push {folder} {repo_id}" + (" --private" if private else "")


def publish(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
            commit_message: str = "Upload resnet-cifar release") -> str:
    """Create the repo if needed and upload the allow-listed files in one commit; return the commit URL.

    The token comes from the argument, else HF_TOKEN or the saved login; it is never printed or written.
    """
    check_repo_id(repo_id)
    files = release_files(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=str(folder), allow_patterns=ALLOW_PATTERNS,
            commit_message=commit_message,
            commit_description=f"Files: {', '.join(files)}",
        )
    except NETWORK_ERRORS as err:
        # Keep it to one line, without the request (headers carry the token).
        reason = redact(str(err).splitlines()[0] if str(err) else type(err).__name__, token)
        raise PublishError(
            f"push to {repo_id} failed ({type(err).__name__}: {reason}); the release is intact in {folder}; "
            f"retry with: {retry_command(folder, repo_id, private)}"
        ) from None
    return str(getattr(commit, "commit_url", commit))
