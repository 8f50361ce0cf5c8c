"""Push a finished release folder to the Hugging Face Hub in one commit of exactly its release files."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from resnet_cifar import release


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
_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PublishError(RuntimeError):
    """A push that did not happen; the message is one line and says how to retry."""


def check_repo_id(repo_id: str, what: str = "--push-to-hub") -> str:
    """Refuse anything that is not 'owner/name' before any work is done."""
    if not _REPO_ID.match(repo_id or "") or ".." in repo_id or repo_id.endswith((".git", "-", ".")):
        raise ValueError(f"{what} must be 'owner/name' (letters, digits, '-', '_', '.'), got {repo_id!r}")
    return repo_id


def redact(text: str, token: str | None = None) -> str:
    """Remove the token in use (argument, HF_TOKEN or saved login) and anything shaped like one."""
    for secret in (token, get_token()):
        if secret:
            text = text.replace(secret, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


def one_line(err: BaseException, token: str | None = None) -> str:
    """An exception as one line without the request (headers carry the token) or the token itself."""
    return redact(str(err).splitlines()[0] if str(err) else type(err).__name__, token)


def check_write_access(repo_id: str, token: str | None = None, repo_type: str = "model") -> str:
    """Before any work: a token is there, the Hub accepts it, and it may write to the repo's owner; returns the user.

    A read-only token, or a namespace that is neither the user nor one of their organizations, is refused here,
    not after an hour of training.
    """
    if not (token or get_token()):
        raise PublishError(f"pushing to {repo_id} needs a Hugging Face token with write access: set HF_TOKEN or run "
                           "`hf auth login`")
    try:
        me = HfApi(token=token).whoami()
    except NETWORK_ERRORS as err:
        raise PublishError(f"cannot check the token for {repo_id} ({type(err).__name__}: {one_line(err, token)}); "
                           "check the token and the network, then run again") from None
    auth = (me.get("auth") or {}).get("accessToken") or {}
    if auth.get("role") == "read":
        raise PublishError(f"the token of {me.get('name')} is read-only; {repo_id} needs a token with write access")
    owner = repo_id.split("/")[0]
    namespaces = {me.get("name")} | {org.get("name") for org in me.get("orgs") or []}
    if owner not in namespaces:
        raise PublishError(f"{me.get('name')} cannot write to {owner}/: the token's namespaces are "
                           f"{', '.join(sorted(n for n in namespaces if n))}")
    return str(me.get("name"))


def retry_command(folder: str | Path, repo_id: str, private: bool) -> str:
    """The command that re-pushes the folder."""
    return f"resnet-cifar-push {folder} {repo_id}" + (" --private" if private else "")


def upload(api: HfApi, repo_id: str, repo_type: str, contents: dict[str, bytes], commit_message: str) -> str:
    """One commit adding exactly `contents` (path in repo -> bytes), listed in its description; the commit URL."""
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in contents.items()]
    commit = api.create_commit(repo_id=repo_id, repo_type=repo_type, operations=operations,
                               commit_message=commit_message,
                               commit_description="Files: " + ", ".join(contents))
    return str(getattr(commit, "commit_url", commit))


def publish(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
            commit_message: str = "Upload resnet-cifar release") -> str:
    """Create the repo if needed and upload the release's own files in one commit; return the commit URL.

    Only the names a release has (resnet_cifar.release.FILES), each a regular file read without following a
    link: nothing else in the folder, nothing a symbolic link points to. The token comes from the argument,
    else HF_TOKEN or the saved login; it is never printed or written.
    """
    check_repo_id(repo_id)
    try:
        contents = {name: release.read_bytes(folder, name) for name in release.files(folder)}
    except release.ReleaseError as err:
        raise PublishError(f"{err}; nothing was pushed") from None
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return upload(api, repo_id, "model", contents, commit_message)
    except NETWORK_ERRORS as err:
        raise PublishError(
            f"push to {repo_id} failed ({type(err).__name__}: {one_line(err, token)}); the release is intact in "
            f"{folder}; retry with: {retry_command(folder, repo_id, private)}"
        ) from None
