"""Benchmarks of the launched Space (python space/app.py), through gradio_client, as a visitor's program sees it.

    python benchmarks/space_bench.py latency [--repeats 50]   # /classify, /gradcam 1 and 10 images
    python benchmarks/space_bench.py load [--clients 8 --requests 50]
    python benchmarks/space_bench.py coldstart [--runs 3]
    python benchmarks/space_bench.py hostile [--clients 4]   # worst-case uploads: peak RSS, a normal request's wait
    python benchmarks/space_bench.py galleries [--repeats 10]   # gallery round trips: client vs server, bytes
    python benchmarks/space_bench.py all

Latency: median and p95 of each endpoint through gradio_client (upload, queue, pre/post-processing, download
included), beside the server time the app logs for the same requests (decode, model, overlays; measured inside
the handler). Load: N concurrent clients, each with its own Client, mixed endpoints; failures, p50/p95/max and
the server process's peak RSS (VmHWM). Cold start: process start to the page answering and to the first
/classify answer. The served release is MODEL_ID, else space/model/, else a seeded untrained ResNet9 written to
a temporary folder (timings do not depend on the weights). Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "space"
EXAMPLES = sorted((SPACE / "examples").glob("*.png"))
ENV = {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
# httpx's default 5 s timeout on uploads and downloads would count a slow answer as a failure.
CLIENT_KWARGS = {"verbose": False, "httpx_kwargs": {"timeout": 300}}
SERVER_TIME = re.compile(r"server time /(\w+) images=(\d+) ([\d.]+) ms$")


def release_folder() -> str:
    """MODEL_ID, the bundled release, or a seeded untrained release in a temporary folder."""
    if os.environ.get("MODEL_ID"):
        return os.environ["MODEL_ID"]
    if (SPACE / "model" / "model.safetensors").is_file():
        return str(SPACE / "model")
    import numpy as np
    import torch

    from resnet_cifar import ResNet9
    from resnet_cifar.release import MisclassifiedSet, save_misclassified

    folder = tempfile.mkdtemp(prefix="space-bench-release-")
    torch.manual_seed(0)
    ResNet9().save_pretrained(folder)
    rng = np.random.default_rng(0)
    n = 100
    true = rng.integers(0, 10, n)
    save_misclassified(folder, MisclassifiedSet(
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), true.astype(np.int64),
        ((true + 1) % 10).astype(np.int64), rng.uniform(0.5, 1, n).astype(np.float32)))
    return folder


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python space/app.py` in a subprocess on a free port, its log kept for the server times."""

    def __init__(self, model: str, threads: int | None, root: Path = ROOT) -> None:
        """`root`: the checkout whose space/app.py and resnet_cifar run (another revision's worktree for a
        before-and-after comparison)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tempfile.NamedTemporaryFile(prefix="space-bench-", suffix=".log", delete=False)
        env = {**os.environ, **ENV, "MODEL_ID": model, "GRADIO_SERVER_PORT": str(self.port),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        if threads:
            env["SPACE_TORCH_THREADS"] = str(threads)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(root / "space" / "app.py")], cwd=root, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_up(self, timeout: float = 300) -> float:
        """Seconds from process start until the page answers 200."""
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{Path(self.log.name).read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(Path(self.log.name).read_text())

    def server_times(self) -> list[tuple[str, int, float]]:
        """(endpoint, images, ms) of every request the app logged so far."""
        lines = Path(self.log.name).read_text().splitlines()
        return [(m[1], int(m[2]), float(m[3])) for m in map(SERVER_TIME.search, lines) if m]

    def peak_rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) of the server process in MiB, from /proc."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        fields = (line.split(":", 1) for line in status.splitlines())
        kb = {k: int(v.split()[0]) for k, v in fields if k in ("VmRSS", "VmHWM")}
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def requests_by_name():
    """The measured requests: name -> (api_name, args, the endpoint and image count the server logs)."""
    from gradio_client import handle_file

    upload = handle_file(str(EXAMPLES[6]))
    return {
        "/classify, 1 image": ("/classify", (upload, 3), ("classify", 1)),
        "/gradcam, 1 image": ("/gradcam", (upload, 1, "layer3", 0.5), ("gradcam", 1)),
        "/gradcam, 10 images": ("/gradcam", (upload, 10, "layer3", 0.5), ("gradcam", 10)),
    }


def latency(model: str, repeats: int, threads: int | None) -> str:
    """Median and p95 per endpoint, through the client and inside the server, interleaved."""
    from gradio_client import Client

    server = Server(model, threads)
    try:
        server.wait_up()
        client = Client(server.url, **CLIENT_KWARGS)
        cases = requests_by_name()
        for api_name, args, _ in cases.values():  # warm-up: first calls allocate and fill caches
            for _ in range(3):
                client.predict(*args, api_name=api_name)
        skip = len(server.server_times())
        client_ms: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, (api_name, args, _) in cases.items():
                start = time.perf_counter()
                client.predict(*args, api_name=api_name)
                client_ms[name].append((time.perf_counter() - start) * 1000)
        logged = server.server_times()[skip:]
    finally:
        server.stop()
    rows = ["| request | client: median (ms) | client: p95 (ms) | server time: median (ms) | server time: p95 (ms) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for name, (_, _, key) in cases.items():
        inside = [ms for endpoint, n, ms in logged if (endpoint, n) == key]
        rows.append(f"| `{name}` | {statistics.median(client_ms[name]):.1f} | {percentile(client_ms[name], 95):.1f} "
                    f"| {statistics.median(inside):.1f} | {percentile(inside, 95):.1f} |")
    return "\n".join(rows)


def load(model: str, clients: int, per_client: int, threads: int | None) -> str:
    """Concurrent clients with mixed endpoints: failures, latency percentiles, throughput, peak memory."""
    from gradio_client import Client, handle_file

    upload = handle_file(str(EXAMPLES[0]))
    mix = [
        ("/classify", (upload, 3)),
        ("/gradcam", (upload, 5, "layer3", 0.5)),
        ("/gradcam", (None, 10, "layer2", 0.7)),
        ("/misclassified", (20, True, "layer1", 0.5)),
        ("/compare", (upload, "dog", "layer3", 0.5)),
    ]
    server = Server(model, threads)
    latencies: list[float] = []
    failures: list[str] = []
    try:
        server.wait_up()
        Client(server.url, **CLIENT_KWARGS).predict(upload, 3, api_name="/classify")
        rss_idle, _ = server.peak_rss_mb()

        def visitor(index: int) -> None:
            client = Client(server.url, **CLIENT_KWARGS)
            for i in range(per_client):
                api_name, args = mix[(index + i) % len(mix)]
                start = time.perf_counter()
                try:
                    client.predict(*args, api_name=api_name)
                    latencies.append((time.perf_counter() - start) * 1000)
                except Exception as err:  # noqa: BLE001 - counted and reported
                    failures.append(f"{api_name}: {err!r}")

        threads_ = [threading.Thread(target=visitor, args=(i,)) for i in range(clients)]
        start = time.perf_counter()
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        wall = time.perf_counter() - start
        rss_now, rss_peak = server.peak_rss_mb()
    finally:
        server.stop()
    total = clients * per_client
    lines = [
        f"- {clients} concurrent clients x {per_client} requests = {total}, cycling /classify, /gradcam (upload + 4 "
        "examples), /gradcam (10 examples), /misclassified (20 with Grad-CAM), /compare.",
        f"- Failed requests: **{len(failures)}**" + (f" (first: {failures[0]})" if failures else "") + ".",
        f"- Latency per request through the client: median {statistics.median(latencies):.0f} ms, "
        f"p95 **{percentile(latencies, 95):.0f} ms**, max {max(latencies):.0f} ms; {total / wall:.1f} requests/s "
        f"over {wall:.1f} s.",
        f"- Server RSS: {rss_idle:.0f} MiB after the first request, {rss_now:.0f} MiB after the load, "
        f"peak (VmHWM) **{rss_peak:.0f} MiB**.",
    ]
    return "\n".join(lines)


def worktree(revision: str) -> Path:
    """A detached git worktree of `revision` in a temporary folder (removed by remove_worktree)."""
    folder = Path(tempfile.mkdtemp(prefix="space-bench-before-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(folder), revision], check=True)
    return folder


def remove_worktree(folder: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)


def gallery_files(result) -> list:
    """The image entries of an answer: each item of a gallery, or the one image of a (sheet, index) answer."""
    if isinstance(result, tuple):
        return [result[0]]
    return [item["image"] for item in result]


def galleries(model: str, repeats: int, threads: int | None, before: str | None = None) -> str:
    """Gallery round trips through gradio_client (download of every image included) against the server time,
    with the bytes the client receives per answer; and the same with download_files=False and the images
    fetched over one connection (gradio_client opens a new HTTP client for every file it downloads).
    With `before` (a git revision), that revision's app runs beside this one and every call is made to both,
    interleaved, so that both columns see the same machine."""
    import httpx
    from gradio_client import Client, handle_file

    upload = handle_file(str(EXAMPLES[6]))
    cases = {
        "/gradcam, 10 images": ("/gradcam", (upload, 10, "layer3", 0.5)),
        "/misclassified, 100 images": ("/misclassified", (100, False, "layer3", 0.5)),
        "/misclassified, 100 images with Grad-CAM": ("/misclassified", (100, True, "layer3", 0.5)),
    }
    trees = {"before": worktree(before)} if before else {}
    versions = [*trees, "after"]
    servers = {name: Server(model, threads, trees.get(name, ROOT)) for name in versions}
    client_ms = {(v, name): [] for v in versions for name in cases}
    urls_ms = {(v, name): [] for v in versions for name in cases}
    sizes, answers = {}, {}
    try:
        for server in servers.values():
            server.wait_up()
        clients = {v: Client(servers[v].url, **CLIENT_KWARGS) for v in versions}
        by_url = {v: Client(servers[v].url, download_files=False, **CLIENT_KWARGS) for v in versions}
        session = httpx.Client(timeout=300)
        for v in versions:
            for api_name, args in cases.values():
                clients[v].predict(*args, api_name=api_name)
        skip = {v: len(servers[v].server_times()) for v in versions}
        for _ in range(repeats):
            for name, (api_name, args) in cases.items():
                for v in versions:
                    start = time.perf_counter()
                    for image in gallery_files(by_url[v].predict(*args, api_name=api_name)):
                        session.get(image["url"]).raise_for_status()
                    urls_ms[v, name].append((time.perf_counter() - start) * 1000)
                    start = time.perf_counter()
                    files = gallery_files(clients[v].predict(*args, api_name=api_name))
                    client_ms[v, name].append((time.perf_counter() - start) * 1000)
                    sizes[v, name] = sum(Path(f).stat().st_size for f in files)
                    answers[v, name] = f"{len(files)} {Path(files[0]).suffix.lstrip('.')}"
        logged = {v: servers[v].server_times()[skip[v]:] for v in versions}
    finally:
        for server in servers.values():
            server.stop()
        for tree in trees.values():
            remove_worktree(tree)
    rows = ["| request | version | client, gradio_client downloads: median (ms) | client, URLs + one connection: "
            "median (ms) | server time: median (ms) | files | bytes per answer |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for i, name in enumerate(cases):
        for v in versions:
            inside = [ms for j, (_, _, ms) in enumerate(logged[v]) if (j // 2) % len(cases) == i]
            label = f"{v} ({before})" if v == "before" else v
            rows.append(f"| `{name}` | {label} | {statistics.median(client_ms[v, name]):.0f} | "
                        f"{statistics.median(urls_ms[v, name]):.0f} | {statistics.median(inside):.0f} | "
                        f"{answers[v, name]} | {sizes[v, name]:,} |")
    return "\n".join(rows)


def hostile_png(width: int = 8000, height: int = 5000) -> bytes:
    """A small PNG (about 0.3 MB) that declares width x height RGBA at 16 bits per channel: 8 bytes a pixel."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\x7f" * (width * 8)  # filter byte, then mid-grey opaque-ish pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)  # 16-bit, colour type 6 = RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hostile(model: str, clients: int, threads: int | None) -> str:
    """`clients` concurrent worst-case uploads (40-megapixel 16-bit RGBA PNGs) while one visitor classifies an
    example: the server's peak RSS, the hostile requests' times and the normal request's wait."""
    from gradio_client import Client, handle_file

    path = Path(tempfile.mkdtemp(prefix="space-bench-hostile-")) / "hostile.png"
    path.write_bytes(hostile_png())
    server = Server(model, threads)
    hostile_ms: list[float] = []
    outcomes: list[str] = []
    try:
        server.wait_up()
        normal = Client(server.url, **CLIENT_KWARGS)
        normal.predict(handle_file(str(EXAMPLES[0])), 3, api_name="/classify")
        rss_idle, _ = server.peak_rss_mb()
        alone = []
        for _ in range(5):
            start = time.perf_counter()
            normal.predict(handle_file(str(EXAMPLES[0])), 3, api_name="/classify")
            alone.append((time.perf_counter() - start) * 1000)
        own = [Client(server.url, **CLIENT_KWARGS) for _ in range(clients)]

        def attacker(client) -> None:
            start = time.perf_counter()
            try:
                client.predict(handle_file(str(path)), 3, api_name="/classify")
                outcomes.append("answered")
            except Exception as err:  # noqa: BLE001 - a refusal is a fine outcome; reported
                outcomes.append(f"refused: {str(err).splitlines()[0][:100]}")
            hostile_ms.append((time.perf_counter() - start) * 1000)

        workers = [threading.Thread(target=attacker, args=(c,)) for c in own]
        for t in workers:
            t.start()
        time.sleep(0.3)  # the uploads are under way
        start = time.perf_counter()
        normal.predict(handle_file(str(EXAMPLES[0])), 3, api_name="/classify")
        waited = (time.perf_counter() - start) * 1000
        for t in workers:
            t.join()
        _, rss_peak = server.peak_rss_mb()
    finally:
        server.stop()
    return "\n".join([
        f"- {clients} concurrent /classify uploads of a {path.stat().st_size / 1e6:.2f} MB PNG declaring 8000x5000 "
        "RGBA at 16 bits per channel (40 megapixels, 320 MB of samples), plus one normal /classify of an example.",
        f"- Hostile requests: {', '.join(sorted(set(outcomes)))}; time median {statistics.median(hostile_ms):.0f} ms, "
        f"max {max(hostile_ms):.0f} ms.",
        f"- The normal request: {statistics.median(alone):.0f} ms alone (median of 5), **{waited:.0f} ms** during the "
        "hostile uploads.",
        f"- Server RSS: {rss_idle:.0f} MiB idle, peak (VmHWM) **{rss_peak:.0f} MiB**.",
    ])


def coldstart(model: str, runs: int, threads: int | None) -> str:
    """Process start to the page answering, and to the first /classify answer through a new client."""
    from gradio_client import Client, handle_file

    up, first = [], []
    for _ in range(runs):
        server = Server(model, threads)
        try:
            up.append(server.wait_up())
            Client(server.url, **CLIENT_KWARGS).predict(handle_file(str(EXAMPLES[0])), 3, api_name="/classify")
            first.append(time.perf_counter() - server.started)
        finally:
            server.stop()
    return (f"- Process start to the page answering: median **{statistics.median(up):.1f} s** "
            f"(runs: {', '.join(f'{s:.1f}' for s in up)}).\n"
            f"- Process start to the first /classify answer (new gradio_client, upload included): median "
            f"**{statistics.median(first):.1f} s** (runs: {', '.join(f'{s:.1f}' for s in first)}).")


def machine() -> str:
    """CPU, cores, versions and the load average, for the record."""
    import gradio
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}, "
            f"gradio {gradio.__version__}")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["latency", "load", "coldstart", "hostile", "galleries", "all"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--clients", type=int, default=None, help="8 for load, 4 for hostile")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="SPACE_TORCH_THREADS for the server")
    parser.add_argument("--before", default=None,
                        help="galleries: a git revision whose app runs beside this one, every call made to both")
    args = parser.parse_args()
    model = release_folder()
    print(f"- Machine: {machine()}; server torch threads per request: {args.threads or 1}; model: {model}")
    print(f"- Load average before (1, 5, 15 min): {loadavg()}")
    if args.what in ("latency", "all"):
        print(f"\nLatency ({args.repeats} interleaved calls each, after 3 warm-up calls):\n")
        print(latency(model, args.repeats, args.threads))
    if args.what in ("load", "all"):
        print("\nLoad:\n")
        print(load(model, args.clients or 8, args.requests, args.threads))
    if args.what in ("galleries", "all"):
        print(f"\nGalleries ({args.repeats} interleaved calls each, after 1 warm-up call each):\n")
        print(galleries(model, args.repeats, args.threads, args.before))
    if args.what in ("hostile", "all"):
        print("\nHostile uploads:\n")
        print(hostile(model, args.clients or 4, args.threads))
    if args.what in ("coldstart", "all"):
        print("\nCold start:\n")
        print(coldstart(model, args.runs, args.threads))
    print(f"\n- Load average after: {loadavg()}")


if __name__ == "__main__":
    main()
