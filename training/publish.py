"""Push a finished release folder to the Hugging Face Hub in one commit of exactly its release files."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

from resnet_cifar import card, release
from resnet_cifar.hub import NETWORK_ERRORS, PublishError, check_repo_id, commit, one_line

__all__ = ["PublishError", "publish", "retry_command"]


def retry_command(folder: str | Path, repo_id: str, private: bool) -> str:
    """The command that re-pushes the folder."""
    return f"resnet-cifar-push {folder} {repo_id}" + (" --private" if private else "")


def publish(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
            commit_message: str = "Upload resnet-cifar release") -> str:
    """Create the repo if needed and upload the release's own files in one commit; return the commit URL.

    Only the names a release has (resnet_cifar.release.FILES), each a regular file read without following a
    link: nothing else in the folder, nothing a symbolic link points to. The card's usage snippet is pointed at
    `repo_id` (the folder keeps its own), so it runs verbatim on the Hub page. The token comes from the argument,
    else HF_TOKEN or the saved login; it is never printed or written.
    """
    check_repo_id(repo_id)
    try:
        contents = {name: release.read_bytes(folder, name) for name in release.files(folder)}
        contents[release.CARD_NAME] = card.point_usage_to(contents[release.CARD_NAME].decode("utf-8"),
                                                          repo_id).encode("utf-8")
    except (release.ReleaseError, UnicodeDecodeError) as err:
        raise PublishError(f"{err}; nothing was pushed") from None
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return commit(api, repo_id, "model", contents, commit_message)
    except NETWORK_ERRORS as err:
        raise PublishError(
            f"push to {repo_id} failed ({type(err).__name__}: {one_line(err, token)}); the release is intact in "
            f"{folder}; retry with: {retry_command(folder, repo_id, private)}"
        ) from None
