"""The Hub's edge for pushes: repo-id checks, a token check before any work, one commit of exact files, and
errors in one line that never carry the token."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from .errors import first_line


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
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")  # fullmatch: no "\n"


# Owners that stand for "your account" in docs and templates: an id with one of them was copied, not filled in.
PLACEHOLDER_OWNERS = {"owner", "user", "username", "your-username", "your-user", "your-name", "yourname",
                      "your-org", "namespace", "hf-user"}


class PublishError(RuntimeError):
    """A push that did not happen; the message is one line and says what to do."""


def check_repo_id(repo_id: str, what: str = "--push-to-hub") -> str:
    """Refuse anything that is not 'owner/name' before any work is done (ValueError naming `what`)."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or repo_id.endswith((".git", "-", ".")):
        raise ValueError(f"{what} must be 'owner/name' (letters, digits, '-', '_', '.'), got {repo_id!r}")
    if repo_id.split("/")[0].lower() in PLACEHOLDER_OWNERS:
        raise ValueError(f"{what} {repo_id!r} is the placeholder from the docs; give your own Hub repo id, your user "
                         "or organization name first (e.g. 'alice/resnet9-cifar10')")
    return repo_id


def redact(text: str, token: str | None = None) -> str:
    """Remove the token in use (argument, HF_TOKEN or saved login) and anything shaped like one."""
    for secret in (token, get_token()):
        if secret:
            text = text.replace(secret, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


def one_line(err: BaseException, token: str | None = None) -> str:
    """An exception as one line without the request (headers carry the token) or the token itself."""
    return redact(first_line(err), token)


def check_write_access(repo_id: str, token: str | None = None) -> str:
    """Before any work: a token is there, the Hub accepts it, and it may write to the repo's owner; returns the user.

    A read-only token, or a namespace that is neither the user nor one of their organizations, is refused here,
    not after an hour of training or a build.
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


def commit(api: HfApi, repo_id: str, repo_type: str, contents: Mapping[str, bytes], message: str,
           delete: Sequence[str] = ()) -> str:
    """One commit adding exactly `contents` (path in repo -> bytes) and deleting `delete`, listed in its
    description; returns the commit URL.

    Built by hand rather than with HfApi.upload_folder(allow_patterns=..., delete_patterns=...): with hf_xet
    installed (a dependency of huggingface_hub), upload_folder streams through a multi-commit pipeline, so a push
    that fails half way could leave part of a release on the Hub. tests/test_release.py fails when that changes.
    """
    operations: list = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in contents.items()]
    operations += [CommitOperationDelete(path_in_repo=name) for name in delete]
    description = "Files: " + ", ".join(contents) + (f"; removed: {', '.join(delete)}" if delete else "")
    result = api.create_commit(repo_id=repo_id, repo_type=repo_type, operations=operations, commit_message=message,
                               commit_description=description)
    return str(getattr(result, "commit_url", result))
