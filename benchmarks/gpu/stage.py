"""The path from this machine to the lent GPU machine and back: stage the real CIFAR-10 over several calls, train
there with resnet-cifar-train itself, and bring the release back in pieces the device tool accepts.

The device tool sends the checkout (at most 64 MiB a call, carried folders included) and returns at most 8 files
of 16 MiB from $OUT; the GPU machine has torch, lightning, torchmetrics, huggingface_hub, safetensors,
matplotlib, pyarrow and opencv, but not datasets, albumentations or captum. So:

    here    python benchmarks/gpu/stage.py plan --data ../shared/data/cifar10        # the calls, and whether they fit
    here    python benchmarks/gpu/stage.py wheels                                    # once: .whl/ (pinned, cp312)
    here    python benchmarks/gpu/stage.py prepare 1 --data ../shared/data/cifar10   # .stage/ holds call 1's shards
    device  python3 benchmarks/gpu/stage.py receive                  (run, carry [".stage"])
    ...     prepare 2 / receive; the last call carries .stage and .whl and trains:
    device  python3 benchmarks/gpu/stage.py receive && python3 benchmarks/gpu/stage.py train --seeds 0 1 2
    device  python3 benchmarks/gpu/stage.py plain --seeds 0 -- <train's flags>   (the plain loop, timed beside)
    here    python benchmarks/gpu/stage.py unpack <files_at> space/model
    here    python benchmarks/gpu/stage.py report <files_at> ...                 # BENCHMARKS.md's tables

Moving the bundled release (space/model, 26 MB) out of the checkout while staging is the caller's job; `prepare`
refuses a call that would not fit and says what is too large. Every shard carries its SHA-256 in the stage's
manifest and `receive` checks it; `unpack` checks every piece and the release it rebuilds. Tested on the CPU
with the CIFAR-10 sample of tests/data (tests/test_gpu_staging.py).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / ".stage"
WHEELS = ROOT / ".whl"
WHEEL_LIST = Path(__file__).with_name("wheels.txt")
DEVICE_DATA = Path("/tmp/cifar10")
DEVICE_RUNS = Path("/tmp/gpu-runs")
CALL_LIMIT = 64 * 2**20  # what one call of the device tool carries: the checkout and the carried folders
MARGIN = 2 * 2**20  # for files written between planning and the call (logs, caches git does not ignore)
PIECE = 15 * 2**20  # under the 16 MiB a file from $OUT may have
RECIPE = ROOT / "recipes" / "dawnbench-24.yaml"


class StageError(RuntimeError):
    """A step that cannot go on; the message says what to do."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkout_bytes(root: Path = ROOT) -> int:
    """What the device tool sends besides carried folders: tracked files present, and untracked ones not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / name.decode()).stat().st_size for name in listed if name and (root / name.decode()).is_file())


def wheels_bytes(folder: Path = WHEELS) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.whl")) if folder.is_dir() else 0


def dataset_files(data: Path) -> list[Path]:
    """The dataset folder's card and shards (relative), the card first: it rides along with the first call."""
    files = sorted((p.relative_to(data) for p in data.rglob("*") if p.is_file()
                    and (p.suffix == ".parquet" or p.relative_to(data) == Path("README.md"))),
                   key=lambda p: ((data / p).suffix == ".parquet", str(p)))
    if not any(p.suffix == ".parquet" for p in files):
        raise StageError(f"{data} holds no parquet shards; give the dataset folder (plain_text/*.parquet inside)")
    return files


def plan(data: Path, checkout: int, wheels: int) -> list[list[Path]]:
    """Calls of files, each under the limit with the checkout; the test split and the wheels go last."""
    budget = CALL_LIMIT - MARGIN - checkout
    files = dataset_files(data)
    last = [p for p in files if p.name.startswith("test")]
    calls: list[list[Path]] = [[]]
    for path in [p for p in files if p not in last]:
        size = (data / path).stat().st_size
        if size > budget:
            raise StageError(f"{data / path} ({size / 2**20:.1f} MiB) does not fit in one call beside the "
                             f"checkout ({checkout / 2**20:.1f} MiB); move large files (space/model) out of it")
        if sum((data / p).stat().st_size for p in calls[-1]) + size > budget:
            calls.append([])
        calls[-1].append(path)
    final = sum((data / p).stat().st_size for p in last) + wheels
    if final > budget:
        raise StageError(f"the last call ({final / 2**20:.1f} MiB of test split and wheels) does not fit beside the "
                         f"checkout ({checkout / 2**20:.1f} MiB)")
    if calls[-1] and sum((data / p).stat().st_size for p in calls[-1]) + final <= budget:
        calls[-1] += last
    else:
        calls.append(last)
    return calls


def describe(calls: list[list[Path]], data: Path, checkout: int, wheels: int) -> str:
    lines = [f"checkout {checkout / 2**20:.1f} MiB, wheels {wheels / 2**20:.1f} MiB, limit {CALL_LIMIT / 2**20:.0f} MiB"]
    for number, files in enumerate(calls, 1):
        size = sum((data / p).stat().st_size for p in files) + checkout + (wheels if number == len(calls) else 0)
        carry = '[".stage", ".whl"]' if number == len(calls) else '[".stage"]'
        lines.append(f"call {number}: {size / 2**20:.1f} MiB, carry {carry}: " + ", ".join(map(str, files)))
    if checkout > 8 * 2**20:
        lines.append("the checkout is large: move space/model out of it while staging, for fewer calls")
    return "\n".join(lines)


def prepare(number: int, data: Path, stage: Path = STAGE, root: Path = ROOT, wheels_dir: Path = WHEELS) -> list[Path]:
    """Fill `stage` with call `number`'s files and a manifest of their checksums; returns the files."""
    checkout, wheels = checkout_bytes(root), wheels_bytes(wheels_dir)
    calls = plan(data, checkout, wheels)
    if not 1 <= number <= len(calls):
        raise StageError(f"call must be from 1 to {len(calls)}, got {number}")
    if number == len(calls) and wheels == 0:
        raise StageError(f"the last call carries the wheels, and {wheels_dir} has none: run `stage.py wheels` first")
    shutil.rmtree(stage, ignore_errors=True)
    for path in calls[number - 1]:
        (stage / "data" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / path, stage / "data" / path)
    manifest = {"call": number, "calls": len(calls), "files": {str(p): sha256(data / p) for p in calls[number - 1]}}
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return calls[number - 1]


def receive(stage: Path = STAGE, data: Path = DEVICE_DATA) -> dict[str, str]:
    """On the device: copy the staged files into `data`, each checked against the manifest; what `data` holds."""
    manifest = json.loads((stage / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        source, target = stage / "data" / name, data / name
        if sha256(source) != digest:
            raise StageError(f"{name} arrived damaged (SHA-256 differs): stage this call again")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    held = {str(p.relative_to(data)): f"{p.stat().st_size / 2**20:.1f} MiB" for p in sorted(data.rglob("*")) if p.is_file()}
    print(f"call {manifest['call']} of {manifest['calls']} received; {data} holds {json.dumps(held)}", flush=True)
    return held


def install_wheels(wheels: Path, target: Path = Path("/tmp/site")) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, sorted(wheels.glob("*.whl")))],
                   check=True)


def _env(wheels: Path | None) -> dict[str, str]:
    """The environment of a run on the device: the carried wheels' packages and this checkout importable."""
    paths = (["/tmp/site"] if wheels is not None else []) + [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(paths).strip(os.pathsep))


def train(seeds: list[int], data: Path, runs: Path, out: Path, extra: list[str], wheels: Path | None,
          release: bool = True) -> dict:
    """resnet-cifar-train on the recipe once per seed; the median seed's release packed into `out` with a summary.

    A seed an earlier call already trained with the same flags is not trained again, so the seeds can be spread
    over calls of at most 10 minutes (the machine keeps /tmp while it stays warm).
    """
    if wheels is not None:
        install_wheels(wheels)
    env = _env(wheels)
    results = []
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        run_dir = runs / f"seed{seed}"
        done_file = run_dir / "stage-run.json"
        earlier = json.loads(done_file.read_text()) if done_file.is_file() else {}
        if (earlier.get("extra_args"), earlier.get("dataset")) == (extra, str(data)):
            results.append({**earlier, "reused": True})  # trained by an earlier call
            print(f"seed {seed}: trained by an earlier call, {results[-1]['test_accuracy'] * 100:.2f} %", flush=True)
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [sys.executable, "-m", "training.cli", "--config", str(RECIPE), "--dataset", str(data),
                   "--output-dir", str(run_dir), "--seed", str(seed), *extra]
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        with (out / f"train-seed{seed}.log").open("w") as log:
            finished = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        if finished.returncode != 0:
            raise StageError(f"seed {seed} failed (exit {finished.returncode}); its log is train-seed{seed}.log")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
            epochs = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f) if row.get("train_loss")]
        result = {"seed": seed, "wall_seconds": wall, "extra_args": extra, "dataset": str(data), **metrics, "epochs_logged": epochs}
        done_file.write_text(json.dumps(result))
        results.append({**result, "reused": False})
        print(f"seed {seed}: {metrics['test_accuracy'] * 100:.2f} % ({metrics['test_accuracy_tta'] * 100:.2f} % "
              f"with flip TTA), {len(metrics['epoch_seconds'])} epochs in {metrics['train_seconds']:.1f} s "
              f"({metrics['images_per_second']:,.0f} images/s, {metrics['tflops']:.1f} TFLOP/s), fit "
              f"{metrics['fit_seconds']:.1f} s, wall {wall:.1f} s", flush=True)
    accuracies = [r["test_accuracy"] for r in results]
    median = sorted(results, key=lambda r: r["test_accuracy"])[(len(results) - 1) // 2]
    summary = {"seeds": results, "median_seed": median["seed"], "mean_accuracy": statistics.fmean(accuracies),
               "spread": max(accuracies) - min(accuracies), "extra_args": extra}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if release:
        pack(runs / f"seed{median['seed']}" / "release", out)
    return summary


def plain(seeds: list[int], data: Path, runs: Path, out: Path, extra: list[str], wheels: Path | None) -> dict:
    """benchmarks/plain_train.py on the recipe with the same flags, once per seed: Lightning's cost beside the
    resnet-cifar-train runs `train` made in `runs` with the same flags (the ratio of their epoch times)."""
    if wheels is not None:
        install_wheels(wheels)
    env = _env(wheels)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in seeds:
        name = f"plain-{runs.name}-seed{seed}"  # beside the runs it is compared with: one call may time two sets
        target = out / f"{name}.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "plain_train.py"), "--config", str(RECIPE), "--dataset",
                   str(data), "--seed", str(seed), "--json", str(target), *extra]
        print("$", " ".join(command), flush=True)
        with (out / f"{name}.log").open("w") as log:
            finished = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if finished.returncode != 0:
            raise StageError(f"the plain loop failed for seed {seed} (exit {finished.returncode}); its log is "
                             f"{name}.log")
        result = json.loads(target.read_text())
        lightning_file = runs / f"seed{seed}" / "stage-run.json"
        lightning = json.loads(lightning_file.read_text()) if lightning_file.is_file() else {}
        if lightning.get("extra_args") == extra and lightning.get("epoch_seconds"):
            result["lightning_over_plain"] = lightning["train_seconds"] / result["train_seconds"]
            later = sum(lightning["epoch_seconds"][1:]), sum(result["epoch_seconds"][1:])
            if later[1] > 0:
                result["lightning_over_plain_after_first"] = later[0] / later[1]
        result["extra_args"] = extra
        target.write_text(json.dumps(result, indent=2))
        results.append(result)
        ratio = f", Lightning / plain {result['lightning_over_plain']:.3f}" if "lightning_over_plain" in result else ""
        print(f"plain seed {seed}: {result['test_accuracy'] * 100:.2f} %, {len(result['epoch_seconds'])} epochs in "
              f"{result['train_seconds']:.1f} s ({result['images_per_second']:,.0f} images/s){ratio}", flush=True)
    return {"plain": results}


def report(folders: list[Path]) -> str:
    """BENCHMARKS.md's tables from what the calls returned (each folder: a summary.json of `train`, plain-*.json of
    `plain`): one row per run, the accuracy over seeds per set of flags, and every epoch's seconds."""
    runs: list[tuple[str, dict]] = []
    for folder in folders:
        if (folder / "summary.json").is_file():
            summary = json.loads((folder / "summary.json").read_text())
            runs += [("resnet-cifar-train", seed) for seed in summary["seeds"]]
        runs += [("plain loop", json.loads(p.read_text())) for p in sorted(folder.glob("plain-*.json"))]
    if not runs:
        raise StageError(f"no summary.json or plain-*.json in {', '.join(map(str, folders))}")

    names: dict[str, str] = {}  # the flags of each set of runs, by a letter: the tables stay narrow

    def flags(run: dict) -> str:
        return names.setdefault(" ".join(run.get("extra_args") or []) or "(recipe only)", chr(ord("A") + len(names)))

    for _, run in runs:
        flags(run)
    first = runs[0][1]
    lines = [f"Device: {first.get('device')}, torch {first.get('torch')}, {first.get('precision')}; "
             f"{first['train_flops_per_image'] / 1e9:.2f} GFLOP a training image. Flags after the recipe "
             f"(recipes/dawnbench-24.yaml): " + "; ".join(f"{v} = `{k}`" for k, v in names.items()) + ".", "",
             "| loop | flags | seed | test acc | flip TTA | epochs | s (all) | s (after 1st) | images/s (after 1st) "
             "| TFLOP/s (after 1st) | Lightning / plain (after 1st) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for loop, run in runs:
        later = sum(run["epoch_seconds"][1:])
        ratio = run.get("lightning_over_plain_after_first")
        lines.append(f"| {loop} | {flags(run)} | {run['seed']} | {run['test_accuracy'] * 100:.2f} % | "
                     f"{run['test_accuracy_tta'] * 100:.2f} % | {len(run['epoch_seconds'])} | "
                     f"{run['train_seconds']:.2f} | {later:.2f} | {run.get('images_per_second_after_first', 0):,.0f} | "
                     f"{run.get('tflops_after_first', 0):.1f} | {f'{ratio:.3f}' if ratio else ''} |")
    lines += ["", "| loop | flags | seeds | test acc, mean | spread (max - min) | flip TTA, mean |",
              "| --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for loop, run in runs:
        groups.setdefault((loop, flags(run)), []).append(run)
    for (loop, named), group in groups.items():
        accuracy = [r["test_accuracy"] * 100 for r in group]
        tta = [r["test_accuracy_tta"] * 100 for r in group]
        lines.append(f"| {loop} | {named} | {', '.join(str(r['seed']) for r in group)} | "
                     f"{statistics.fmean(accuracy):.2f} % | {max(accuracy) - min(accuracy):.2f} | "
                     f"{statistics.fmean(tta):.2f} % |")
    lines += ["", "Seconds per epoch (device synchronized; the first holds compilation and autotuning):", "",
              "| epoch | " + " | ".join(f"{loop} {flags(run)} seed {run['seed']}" for loop, run in runs) + " |",
              "| --- |" + " --- |" * len(runs)]
    for epoch in range(max(len(run["epoch_seconds"]) for _, run in runs)):
        cells = [f"{run['epoch_seconds'][epoch]:.3f}" if epoch < len(run["epoch_seconds"]) else "" for _, run in runs]
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pack(release_dir: Path, out: Path) -> list[Path]:
    """The release as an uncompressed tar cut into pieces under 16 MiB, with their checksums."""
    archive = out / "release.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(release_dir, arcname="release")
    pieces, digest = [], sha256(archive)
    with archive.open("rb") as f:
        for index, block in enumerate(iter(lambda: f.read(PIECE), b"")):
            piece = out / f"release.tar.{index:02d}"
            piece.write_bytes(block)
            pieces.append(piece)
    archive.unlink()
    (out / "release.json").write_text(json.dumps({"sha256": digest, "pieces": [p.name for p in pieces]}))
    return pieces


def unpack(pieces_dir: Path, dest: Path) -> Path:
    """Here: join the pieces, check the whole, extract the release into `dest` (which must not exist) and load it."""
    info = json.loads((pieces_dir / "release.json").read_text())
    if dest.exists() and any(dest.iterdir()):
        raise StageError(f"{dest} is not empty; move the release there out of the way first")
    joined = dest.parent / f".{dest.name}.tar"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with joined.open("wb") as f:
        for name in info["pieces"]:
            f.write((pieces_dir / name).read_bytes())
    try:
        if sha256(joined) != info["sha256"]:
            raise StageError("the joined pieces differ from what was packed (SHA-256): fetch the files again")
        staging = dest.parent / f".{dest.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(joined) as tar:
            tar.extractall(staging, filter="data")
        if dest.exists():
            dest.rmdir()
        os.replace(staging / "release", dest)
        shutil.rmtree(staging)
    finally:
        joined.unlink(missing_ok=True)
    from resnet_cifar import release

    loaded = release.read(dest)  # the same checks as from_pretrained: config, weights, card, misclassified set
    print(f"release unpacked into {dest}: test accuracy {loaded.test_accuracy}", flush=True)
    return dest


def download_wheels(dest: Path = WHEELS) -> None:
    """The packages the device lacks, pinned to what this checkout is tested with, for its Python 3.12."""
    names = [line.split("#")[0].strip() for line in WHEEL_LIST.read_text().splitlines()]
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest),
                    *[n for n in names if n]], check=True)
    print(f"{dest}: {wheels_bytes(dest) / 2**20:.1f} MiB of wheels", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("plan", help="print the calls and their sizes")
    p.add_argument("--data", type=Path, required=True)
    sub.add_parser("wheels", help="download the wheels the device lacks into .whl/")
    p = sub.add_parser("prepare", help="fill .stage/ with one call's files")
    p.add_argument("call", type=int)
    p.add_argument("--data", type=Path, required=True)
    p = sub.add_parser("receive", help="(device) copy .stage/'s files into the dataset folder")
    p.add_argument("--to", type=Path, default=DEVICE_DATA)
    p = sub.add_parser("train", help="(device) train each seed, pack the median seed's release into $OUT")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", type=Path, default=DEVICE_DATA)
    p.add_argument("--runs", type=Path, default=DEVICE_RUNS)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    p.add_argument("--wheels", type=Path, default=None, help="install these wheels first (the device: .whl)")
    p.add_argument("--no-release", dest="release", action="store_false",
                   help="do not pack the median seed's release (a run made only to be timed)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more resnet-cifar-train flags")
    p = sub.add_parser("plain", help="(device) the same runs in benchmarks/plain_train.py, timed beside train's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data", type=Path, default=DEVICE_DATA)
    p.add_argument("--runs", type=Path, default=DEVICE_RUNS, help="where train ran the same flags (for the ratio)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    p.add_argument("--wheels", type=Path, default=None, help="install these wheels first (the device: .whl)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: the same flags as train's")
    p = sub.add_parser("report", help="BENCHMARKS.md's tables from the folders the calls returned")
    p.add_argument("folders", type=Path, nargs="+")
    p = sub.add_parser("unpack", help="rebuild the release from the pieces the device returned")
    p.add_argument("pieces", type=Path)
    p.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.step == "plan":
            checkout, wheels = checkout_bytes(), wheels_bytes()
            print(describe(plan(args.data, checkout, wheels), args.data, checkout, wheels))
        elif args.step == "wheels":
            download_wheels()
        elif args.step == "prepare":
            files = prepare(args.call, args.data)
            print(f".stage/ holds call {args.call}: {', '.join(map(str, files))}")
        elif args.step == "receive":
            receive(data=args.to)
        elif args.step == "train":
            extra = [a for a in args.extra if a != "--"]
            train(args.seeds, args.data, args.runs, args.out, extra, args.wheels, args.release)
        elif args.step == "plain":
            extra = [a for a in args.extra if a != "--"]
            plain(args.seeds, args.data, args.runs, args.out, extra, args.wheels)
        elif args.step == "report":
            print(report(args.folders))
        else:
            unpack(args.pieces, args.dest)
    except (StageError, OSError, ValueError) as err:
        print(f"stage.py {args.step}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
