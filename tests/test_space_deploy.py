"""resnet-cifar-space: a built Space folder is self-contained (it runs from its own requirements in a fresh
virtual environment, with this checkout neither importable nor installed), and a deploy is one commit of exactly
the built files to a gradio Space, with the Hub faked at its HTTP API."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import yaml
from conftest import EXAMPLES, ROOT, SPACE, TOKEN, FakeHubApi, make_release, running_space
from huggingface_hub import HfApi

from resnet_cifar import release
from space import deploy

CARD = ("---\nlicense: mit\nmodel-index:\n- name: r\n  results:\n  - task: {type: image-classification}\n"
        "    dataset: {type: uoft-cs/cifar10, name: CIFAR-10}\n    metrics:\n    - {type: accuracy, value: 0.8885}\n"
        "---\n# card\n")


def front_matter(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---\n", 2)[1])


def test_build_writes_a_self_contained_space(tmp_path):
    import gradio

    out = deploy.build(tmp_path / "space", model="someone/resnet9", revision="v2")
    files = set(deploy.built_files(out))
    library = {f"resnet_cifar/{p.relative_to(ROOT / 'resnet_cifar').as_posix()}"
               for p in (ROOT / "resnet_cifar").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files == {"app.py", "uploads.py", "gate.py", "README.md", "requirements.txt", "space.json", *library,
                     *(f"examples/{p.name}" for p in EXAMPLES)}
    for name in ("app.py", "uploads.py", "gate.py"):
        assert (out / name).read_bytes() == (SPACE / name).read_bytes(), name
    for name in library:
        assert (out / name).read_bytes() == (ROOT / name).read_bytes(), name
    meta = front_matter(out)
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert meta["models"] == ["someone/resnet9"] and len(meta["short_description"]) <= 60
    assert "## API" in (out / "README.md").read_text()
    assert (out / "space.json").read_text().count("someone/resnet9") == 1 and '"v2"' in (out / "space.json").read_text()
    pins = [line for line in (out / "requirements.txt").read_text().splitlines() if "==" in line]
    assert {p.split("==")[0] for p in pins} == set(deploy.REQUIREMENTS)
    for pin in pins:
        name, version = pin.split("==")
        assert importlib.metadata.version(name).split("+")[0] == version, "pinned to the tested version"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (out / "requirements.txt").read_text()


def test_nothing_in_the_project_points_at_a_repository_that_does_not_exist():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "tests/test_space_deploy.py" in tracked and "space/app.py" in tracked
    for name in tracked:
        path = ROOT / name
        if path == Path(__file__).resolve():
            continue  # this file names them, to look for them
        if path.suffix in (".py", ".md", ".txt", ".cfg", ".toml", ".yaml", ".json") and path.is_file():
            text = path.read_text(errors="replace")
            for made_up in ("github.com/resnet-cifar", "resnet-cifar/resnet9-cifar10", "git+https://github.com"):
                assert made_up not in text, (name, made_up)


def test_build_can_bundle_a_release(tmp_path):
    folder = make_release(tmp_path / "release", card=CARD)
    out = deploy.build(tmp_path / "space", bundle=folder)
    assert sorted(p.name for p in (out / "model").iterdir()) == sorted(release.files(folder))
    assert "models" not in front_matter(out)
    assert '"model": "model"' in (out / "space.json").read_text()


# A file outside the checkout that links point to (as /etc/passwd did in the report), with bytes no source has.
OUTSIDE_BYTES = b"root:x:0:0:OUTSIDE-THE-CHECKOUT-7f3a\n"


def hostile_checkout(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """Copies of space/ and resnet_cifar/ with what a careless checkout holds beside the real files (a token in
    .env, private notes, editor files, an example that links to /etc/passwd); build reads from the copies."""
    import shutil

    space, package = tmp_path / "checkout" / "space", tmp_path / "checkout" / "resnet_cifar"
    shutil.copytree(SPACE, space, ignore=shutil.ignore_patterns("__pycache__", "model"))
    shutil.copytree(ROOT / "resnet_cifar", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (package / "notes_secret.txt").write_text("private notes\n")
    (package / "templates" / ".model_card.md.swp").write_text("editor swap file\n")
    (space / "examples" / ".DS_Store").write_bytes(b"\0\1finder")
    (tmp_path / "passwd").write_bytes(OUTSIDE_BYTES)
    (space / "examples" / "9999_evil.png").symlink_to(tmp_path / "passwd")
    (space / "notes.txt").write_text("not part of the Space\n")
    monkeypatch.setattr(deploy, "HERE", space)
    monkeypatch.setattr(deploy, "package_dir", lambda: package)
    return space, package


def test_build_copies_its_explicit_list_and_nothing_else_that_sits_in_the_checkout(tmp_path, monkeypatch, capsys):
    space, package = hostile_checkout(tmp_path, monkeypatch)
    assert deploy.main(["build", str(tmp_path / "out"), "--model", "someone/resnet9"]) == 0
    files = set(deploy.built_files(tmp_path / "out"))
    modules = {f"resnet_cifar/{p.name}" for p in package.glob("*.py")}
    assert files == {"app.py", "uploads.py", "gate.py", "README.md", "requirements.txt", "space.json",
                     "resnet_cifar/templates/model_card.md", *modules, *(f"examples/{name}" for name in deploy.EXAMPLES)}
    for name in files:
        data = (tmp_path / "out" / name).read_bytes()
        assert TOKEN.encode() not in data and OUTSIDE_BYTES not in data and b"private notes" not in data, name
    printed = capsys.readouterr().out
    assert printed.startswith(f"built {tmp_path / 'out'}: ") and "9999_evil" not in printed
    assert sorted(printed.split(": ", 1)[1].strip().split(", ")) == sorted(files), "build prints what it wrote"


@pytest.mark.parametrize("where", ["examples/0000_cat.png", "app.py", "README.md"])
def test_a_named_file_that_is_a_link_is_refused_and_nothing_is_built(tmp_path, monkeypatch, capsys, where):
    space, _ = hostile_checkout(tmp_path, monkeypatch)
    (space / where).unlink()
    (space / where).symlink_to(tmp_path / "passwd")
    assert deploy.main(["build", str(tmp_path / "out"), "--model", "someone/resnet9"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{space / where} is a symbolic link" in err and "regular files only" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".space-build-*"))


def test_a_module_that_is_a_link_is_refused(tmp_path, monkeypatch):
    _, package = hostile_checkout(tmp_path, monkeypatch)
    (package / "card.py").unlink()
    (package / "card.py").symlink_to(tmp_path / "passwd")
    with pytest.raises(deploy.DeployError, match="card.py is a symbolic link"):
        deploy.build(tmp_path / "out", model="someone/resnet9")


def test_deploy_from_a_careless_checkout_uploads_only_the_built_list(tmp_path, monkeypatch):
    hostile_checkout(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = FakeSpaceHub().install(monkeypatch)
    assert deploy.main(["deploy", "someone/resnet9-space", "--model", "someone/resnet9"]) == 0
    (commit,) = hub.commits
    assert sorted(commit["files"]) == sorted(deploy.built_files(deploy.build(tmp_path / "same", model="someone/r")))
    assert not [n for n in commit["files"] if ".env" in n or "secret" in n or "DS_Store" in n or "9999" in n]
    assert all(OUTSIDE_BYTES not in data and TOKEN.encode() not in data for data in commit["contents"].values())


def test_the_explicit_lists_match_the_checkout_and_setup_cfg():
    import configparser

    tracked = subprocess.run(["git", "ls-files", "space/examples"], cwd=ROOT, capture_output=True, text=True)
    assert sorted(deploy.EXAMPLES) == sorted(Path(p).name for p in tracked.stdout.split()), "every example, by name"
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    declared = [p.strip() for p in setup["options.package_data"]["resnet_cifar"].split(",")]
    assert list(deploy.PACKAGE_DATA) == declared
    assert set(deploy.package_files()) >= {"__init__.py", "model.py", "release.py", "templates/model_card.md"}


@pytest.mark.parametrize("kwargs, words", [
    ({"model": "not-an-id"}, "--model must be 'owner/name'"),
    ({"model": "OWNER/NAME"}, "--model 'OWNER/NAME' is the placeholder from the docs; give your own Hub repo id"),
    ({"model": "your-username/resnet9"}, "is the placeholder from the docs"),
    ({"model": "someone/resnet9\n"}, "--model must be 'owner/name'"),
    ({}, "give the model to serve"),
    ({"model": "a/b", "bundle": "x"}, "give the model to serve"),
])
def test_build_refuses_before_writing(tmp_path, kwargs, words):
    with pytest.raises((ValueError, deploy.DeployError), match=words):
        deploy.build(tmp_path / "space", **kwargs)
    assert not (tmp_path / "space").exists()


def test_build_never_overwrites_a_folder(tmp_path):
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "keep.txt").write_text("mine")
    with pytest.raises(deploy.DeployError, match="exists and is not an empty folder"):
        deploy.build(tmp_path / "space", model="someone/resnet9")
    assert (tmp_path / "space" / "keep.txt").read_text() == "mine"


def test_build_of_an_incomplete_bundle_is_refused(tmp_path):
    folder = make_release(tmp_path / "release")
    (folder / "README.md").unlink()
    with pytest.raises(release.ReleaseError, match="missing README.md"):
        deploy.build(tmp_path / "space", bundle=folder)
    assert not (tmp_path / "space").exists()


# ---------------------------------------------------------------- deploy, with the Hub faked at its edge


class FakeSpaceHub(FakeHubApi):
    """FakeHubApi, plus the files an earlier deploy left in the Space repo."""

    def __init__(self, existing: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.existing = existing

    def install(self, monkeypatch):
        super().install(monkeypatch)
        hub = self
        monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: list(hub.existing))
        return self


def test_deploy_is_one_commit_of_exactly_the_built_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = FakeSpaceHub(existing=(".gitattributes", "app.py", "old_file.py")).install(monkeypatch)
    assert deploy.main(["deploy", "someone/resnet9-space", "--model", "someone/resnet9"]) == 0
    assert hub.repos == [{"repo_id": "someone/resnet9-space", "repo_type": "space", "space_sdk": "gradio",
                          "private": False, "exist_ok": True}]
    (commit,) = hub.commits
    expected = deploy.built_files(deploy.build(tmp_path / "same", model="someone/resnet9"))
    assert commit["repo_type"] == "space" and sorted(commit["files"]) == sorted(expected)
    for name, data in commit["contents"].items():
        assert data == expected[name].read_bytes(), name
        assert TOKEN.encode() not in data
    assert commit["commit_description"].endswith("; removed: old_file.py"), "what an earlier deploy left goes"
    out = capsys.readouterr()
    assert "deployed someone/resnet9-space: https://huggingface.co/someone/resnet9-space/commit/abc123" in out.out
    assert TOKEN not in out.out + out.err


def test_a_failed_deploy_is_one_line_with_the_retry_command(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    failure = httpx2.ConnectError(f"[Errno -3] no route (token {TOKEN})")

    class Failing(FakeSpaceHub):
        def install(self, mp):
            super().install(mp)
            mp.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "someone", "orgs": [],
                                                                "auth": {"accessToken": {"role": "write"}}})
            return self

    Failing(fail_with=failure).install(monkeypatch)
    assert deploy.main(["deploy", "someone/space", "--model", "someone/resnet9", "--revision", "v1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ConnectError" in err
    assert "retry with: resnet-cifar-space deploy someone/space --model someone/resnet9 --revision v1" in err
    assert TOKEN not in err


@pytest.mark.parametrize("argv, words", [
    (["deploy", "no-owner", "--model", "someone/resnet9"], "OWNER/SPACE must be 'owner/name'"),
    (["deploy", "someone/space", "--model", "bad id"], "--model must be 'owner/name'"),
    (["deploy", "OWNER/SPACE", "--model", "someone/resnet9"], "OWNER/SPACE 'OWNER/SPACE' is the placeholder"),
])
def test_a_bad_id_is_refused_before_any_work(monkeypatch, capsys, argv, words):
    hub = FakeSpaceHub().install(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        deploy.main(argv)
    assert exit_.value.code == 2 and words in capsys.readouterr().err
    assert hub.repos == [] and hub.commits == [] and hub.whoami_calls == 0


def test_a_token_that_cannot_write_is_refused_before_the_hub_is_changed(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = FakeSpaceHub(role="read").install(monkeypatch)
    assert deploy.main(["deploy", "someone/space", "--model", "someone/resnet9"]) == 1
    assert "is read-only" in capsys.readouterr().err
    assert hub.repos == [] and hub.commits == []


# ---------------------------------------------------------------- the built Space, installed and run on its own


@pytest.mark.slow
def test_the_built_space_runs_from_its_own_requirements_in_a_fresh_environment(tmp_path):
    """A fresh venv gets exactly requirements.txt (torch pinned first, as CI does); the app then runs from the
    built folder with this checkout on neither sys.path nor pip, and answers gradio_client."""
    from gradio_client import Client, handle_file

    out = deploy.build(tmp_path / "space", bundle=make_release(tmp_path / "release", card=CARD))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    torch_pin = next(line for line in (out / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    # No retries: where the CPU torch index cannot be reached (this sandbox), pip would retry it for minutes
    # although torch is already installed; on a Space it is reachable.
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}, "PIP_RETRIES": "0"}
    for command in ([python, "-m", "pip", "install", "-q", torch_pin],
                    [python, "-m", "pip", "install", "-q", "-r", str(out / "requirements.txt")]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
    isolated = subprocess.run([python, "-c", "import resnet_cifar, sys; print(resnet_cifar.__file__)"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
    assert isolated.returncode != 0, "the checkout must not be importable from the fresh environment"
    env.pop("MODEL_ID", None)
    with running_space("", tmp_path / "space.log", app=out / "app.py", python=python, cwd=out,
                       env={"MODEL_ID": "", "PYTHONPATH": ""}) as url:
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        label = client.predict(handle_file(str(EXAMPLES[0])), 3, api_name="/classify")
        assert len(label["confidences"]) == 3
        gallery = client.predict(None, 2, "layer3", 0.5, api_name="/gradcam")
        assert [g["caption"].split(":")[0] for g in gallery] == ["example cat", "example ship"]
    log = (tmp_path / "space.log").read_text()
    assert f"serving {out / 'model'}" in log, log[-2000:]
    assert str(ROOT) not in log
