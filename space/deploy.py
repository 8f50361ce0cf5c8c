"""resnet-cifar-space: build a self-contained Hugging Face Space folder, or build one and deploy it in one commit.

    resnet-cifar-space build OUT --model OWNER/NAME [--revision R]
    resnet-cifar-space build OUT --bundle runs/resnet9/release      # the release travels inside the Space
    resnet-cifar-space deploy OWNER/SPACE --model OWNER/NAME [--private]

The folder holds app.py, the ten examples, the resnet_cifar package's modules and templates, requirements.txt pinned to the
versions installed here (the ones the app is tested with; CPU torch), README.md with the Space's front matter, and
space.json naming the model the app serves. Copying the pure-Python package rather than building a wheel keeps
the Space's source readable on its Hub page, needs no build backend on the Space, and makes what runs there the
very files tested here; app.py imports it from its own folder. Build copies an explicit list of regular files
(`sources()`), never a folder and never through a link, and prints it; deploy uploads exactly that list.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pkgutil
import shutil
import stat
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_NAME = "space.json"  # read by app.py: which release to serve
APP_FILE = "app.py"
APP_MODULES = ("uploads.py", "gate.py")  # the app's siblings, imported top-level as the Space runs it
# What the Space installs: the app's and the library's runtime imports, pinned to the versions installed here.
REQUIREMENTS = ("torch", "gradio", "huggingface_hub", "safetensors", "numpy", "pillow", "captum", "pyyaml")
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
FRONT_MATTER = {
    "title": "ResNet-9 CIFAR-10 Grad-CAM",
    "emoji": "🔍",
    "colorFrom": "blue",
    "colorTo": "red",
    "sdk": "gradio",
    "app_file": APP_FILE,
    "license": "mit",
    "short_description": "CIFAR-10 ResNet-9 top-k classes and Captum Grad-CAM",
    "tags": ["image-classification", "cifar10", "grad-cam", "explainability"],
}


class DeployError(RuntimeError):
    """A build or deploy that did not happen; one line, with what to do."""


def pinned_requirements() -> str:
    """requirements.txt: the installed version of each runtime dependency, torch from its CPU index."""
    lines = [
        "# The versions this Space was built and tested with (resnet-cifar-space build).",
        "# A Space (2 vCPUs, no GPU) needs only the CPU build of torch; without this index pip pulls GBs of CUDA.",
        f"--extra-index-url {CPU_TORCH_INDEX}",
    ]
    for name in REQUIREMENTS:
        version = importlib.metadata.version(name).split("+")[0]  # 2.13.0+cpu -> 2.13.0: the CPU index serves it
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def front_matter(model: str | None) -> str:
    """The Space's YAML front matter: the SDK and Python it is tested with, and the model it serves."""
    import gradio
    import yaml

    meta = dict(FRONT_MATTER, sdk_version=gradio.__version__,
                python_version=f"{sys.version_info.major}.{sys.version_info.minor}")
    if model:
        meta["models"] = [model]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


# The Space's examples, by name: build copies these and nothing else that happens to sit in examples/.
EXAMPLES = ("0000_cat.png", "0001_ship.png", "0003_airplane.png", "0004_frog.png", "0006_automobile.png",
            "0011_truck.png", "0012_dog.png", "0013_horse.png", "0022_deer.png", "0025_bird.png")
# The library's data files, as setup.cfg's package_data declares them (a test keeps the two equal).
PACKAGE_DATA = ("templates/*.md",)


def read_regular(path: Path) -> bytes:
    """A file's bytes, opened without following a link; DeployError for a link or anything not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        kind = "a symbolic link" if path.is_symlink() else f"unreadable ({err.strerror})"
        raise DeployError(f"{path} is {kind}; a Space is built from regular files only: replace it with the "
                          "file itself") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise DeployError(f"{path} is not a regular file; a Space is built from regular files only")
        return f.read()


def package_dir() -> Path:
    """The folder of the resnet_cifar package installed here."""
    import resnet_cifar

    return Path(resnet_cifar.__file__).resolve().parent


def package_files() -> list[str]:
    """The resnet_cifar files a Space needs, relative to the package: its modules and its declared data files.

    An explicit list, not a copy of the folder: whatever else sits there (an .env, notes, editor files) stays out.
    """
    source = package_dir()
    names = ["__init__.py"] + [f"{m.name}.py" for m in pkgutil.iter_modules([str(source)]) if not m.ispkg]
    for pattern in PACKAGE_DATA:
        names += [p.relative_to(source).as_posix() for p in source.glob(pattern) if not p.name.startswith(".")]
    return sorted(set(names))


def sources() -> dict[str, Path]:
    """What build copies (path in the Space -> file here), besides the files it writes itself."""
    package = package_dir()
    found = {name: HERE / name for name in (APP_FILE, *APP_MODULES)}
    found.update({f"examples/{name}": HERE / "examples" / name for name in EXAMPLES})
    found.update({f"resnet_cifar/{name}": package / name for name in package_files()})
    return found


def build(out: str | os.PathLike, model: str | None = None, revision: str | None = None,
          bundle: str | os.PathLike | None = None) -> Path:
    """Write a self-contained Space folder at `out` (which must not exist or be empty); returns it."""
    from resnet_cifar import release
    from resnet_cifar.hub import check_repo_id

    out = Path(out)
    if (model is None) == (bundle is None):
        raise DeployError("give the model to serve: --model OWNER/NAME (a Hub repo), or --bundle FOLDER (a release "
                          "folder copied into the Space)")
    if model is not None:
        check_repo_id(model, "--model")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DeployError(f"{out} exists and is not an empty folder; pick a new folder to build into")
    bundled = release.files(bundle) if bundle is not None else []
    staging = Path(tempfile.mkdtemp(prefix=".space-build-", dir=out.parent if out.parent.exists() else None))
    try:
        for name, path in sources().items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(read_regular(path))
        (staging / "requirements.txt").write_text(pinned_requirements())
        source = {"model": model, "revision": revision} if model else {"model": "model", "revision": None}
        (staging / CONFIG_NAME).write_text(json.dumps(source, indent=2) + "\n")
        readme = read_regular(HERE / "README.md").decode("utf-8")
        (staging / "README.md").write_text(front_matter(model) + "\n" + readme, encoding="utf-8")
        if bundle is not None:
            (staging / "model").mkdir()
            for name in bundled:
                (staging / "model" / name).write_bytes(release.read_bytes(bundle, name))
        for path in staging.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(staging, 0o755)
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def built_files(folder: Path) -> dict[str, Path]:
    """Every file of a built Space (path in the repo -> local path); a link or special file is refused."""
    files = {}
    for path in sorted(folder.rglob("*")):
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise DeployError(f"{path} is not a regular file; a Space folder holds regular files only")
        files[path.relative_to(folder).as_posix()] = path
    return files


def deploy(space_id: str, model: str | None = None, revision: str | None = None,
           bundle: str | os.PathLike | None = None, private: bool = False, token: str | None = None) -> str:
    """Build the Space, create its repo (gradio SDK) if needed and upload exactly the built files in one commit
    (deleting what an earlier deploy left that this build does not have); returns the commit URL."""
    from huggingface_hub import HfApi

    from resnet_cifar import hub

    hub.check_repo_id(space_id, "OWNER/SPACE")
    with tempfile.TemporaryDirectory(prefix="resnet-cifar-space-") as tmp:
        folder = build(Path(tmp) / "space", model, revision, bundle)
        files = {name: path.read_bytes() for name, path in built_files(folder).items()}
        hub.check_write_access(space_id, token)
        try:
            api = HfApi(token=token)
            api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            stale = [name for name in api.list_repo_files(space_id, repo_type="space")
                     if name not in files and name != ".gitattributes"]
            return hub.commit(api, space_id, "space", files, "Deploy resnet-cifar Space", delete=stale)
        except hub.NETWORK_ERRORS as err:
            raise DeployError(f"deploy to {space_id} failed ({type(err).__name__}: {hub.one_line(err, token)}); "
                              f"retry with: {retry_command(space_id, model, revision, bundle, private)}") from None


def retry_command(space_id: str, model: str | None, revision: str | None, bundle: str | os.PathLike | None,
                  private: bool) -> str:
    """The command that deploys the same Space again."""
    source = f"--model {model}" + (f" --revision {revision}" if revision else "") if model else f"--bundle {bundle}"
    return f"resnet-cifar-space deploy {space_id} {source}" + (" --private" if private else "")


def main(argv: list[str] | None = None) -> int:
    """Entry point of resnet-cifar-space."""
    from resnet_cifar.hub import PublishError

    parser = argparse.ArgumentParser(prog="resnet-cifar-space", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("build", "write a Space folder"), ("deploy", "build and push a Space in one commit")):
        command = commands.add_parser(name, help=helptext)
        if name == "build":
            command.add_argument("out", type=Path, help="folder to create")
        else:
            command.add_argument("space", metavar="OWNER/SPACE")
            command.add_argument("--private", action="store_true")
        source = command.add_mutually_exclusive_group(required=True)
        source.add_argument("--model", metavar="OWNER/NAME", help="the release on the Hub the Space serves")
        source.add_argument("--bundle", metavar="FOLDER", help="a release folder copied into the Space")
        command.add_argument("--revision", help="Hub revision of --model (branch, tag or commit)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            folder = build(args.out, args.model, args.revision, args.bundle)
            print(f"built {folder}: {', '.join(built_files(folder))}")
        else:
            url = deploy(args.space, args.model, args.revision, args.bundle, args.private)
            print(f"deployed {args.space}: {url}")
    except ValueError as err:  # a bad id or an incomplete release: refused before any work
        parser.error(str(err))
    except (DeployError, PublishError) as err:
        print(f"resnet-cifar-space: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
