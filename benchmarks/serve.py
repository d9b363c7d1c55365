"""Speed of ``tinycats serve`` on this machine, through real HTTP to a real server process.

The demo runs of configs/classifier_sample.yaml (ResNet-18, 64 px) and configs/dit_sample.yaml
(the mini DiT, 32 px), trained for one step by ``tinycats fit`` (speed does not depend on how
well they learned), served by ``tinycats serve`` in its own process. Measured: process start to
the first health answer and to the first classify answer; warm latency p50/p95 of classifying
one photo and of drawing 8 cats at 25 steps; classify requests per second under concurrent
clients.

    python -m benchmarks.serve [--out benchmarks/results.md]   (replaces its "## Serving" section)
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.harness import PHOTOS, REPO, kept_section, markdown_table, replace_section

HEADING = "## Serving"
CONFIGS = ("configs/classifier_sample.yaml", "configs/dit_sample.yaml")
DRAW = {"breed": "Bengal", "n": 8, "steps": 25, "cfg_scale": 3.0, "seed": 0}


def train_demo_runs(outputs: Path, data: Path) -> None:
    """One training step of each demo config, so that real run directories exist."""
    for config in CONFIGS:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tinycats",
                "fit",
                "-c",
                config,
                f"--run.outputs={outputs}",
                f"--data.root={data}",
                f"--data.source={PHOTOS}",
                "--trainer.max_steps=1",
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    return statistics.median(seconds) * 1e3, statistics.quantiles(seconds, n=20)[18] * 1e3


def timed(call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return times


def measure(outputs: Path, repeats: int, draws: int, requests: int) -> dict:
    """Start the server on ``outputs``' runs and time it; returns the figures."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    photo = sorted(PHOTOS.glob("Bengal_*.jpg"))[0]
    files = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    began = time.perf_counter()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tinycats",
            "serve",
            "--runs_dir",
            str(outputs),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            healthy = time.perf_counter() - began
            client.post("/api/classify", files=files).raise_for_status()
            first = time.perf_counter() - began

            def classify() -> None:
                client.post("/api/classify", files=files).raise_for_status()

            def draw() -> None:
                client.get("/api/draw", params=DRAW).raise_for_status()

            timed(classify, 5)
            classify_times = timed(classify, repeats)
            timed(draw, 1)
            draw_times = timed(draw, draws)
        throughput = {clients: burst(url, files, clients, requests) for clients in (1, 4, 8)}
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "load": os.getloadavg()[0],
        "healthy": healthy,
        "first": first,
        "classify": percentiles(classify_times),
        "draw": percentiles(draw_times),
        "throughput": throughput,
    }


def burst(url: str, files: dict, clients: int, requests: int) -> float:
    """Classify requests per second when ``clients`` clients send ``requests`` between them."""

    def client_loop(count: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(count):
                client.post("/api/classify", files=files).raise_for_status()

    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as workers:
        list(workers.map(client_loop, shares))
    return requests / (time.perf_counter() - began)


def report(figures: dict, repeats: int, draws: int, requests: int) -> str:
    """The Markdown section for benchmarks/results.md."""
    latency = markdown_table(
        ["request", "p50 ms", "p95 ms", "goal (p50)"],
        [
            [
                "classify one photo (demo classifier, 64 px)",
                *map("{:.0f}".format, figures["classify"]),
                "≤ 50 ms",
            ],
            [
                "draw 8 Bengals, 25 steps, cfg_scale 3 (demo DiT, 32 px)",
                *map("{:.0f}".format, figures["draw"]),
                "≤ 2000 ms",
            ],
        ],
    )
    start = markdown_table(
        ["from `tinycats serve` starting to", "seconds"],
        [
            ["its first health answer (imports, both runs loaded)", f"{figures['healthy']:.1f}"],
            ["its first classify answer", f"{figures['first']:.1f}"],
        ],
    )
    rates = markdown_table(
        ["concurrent clients", "classify requests/s"],
        [[clients, f"{rate:.1f}"] for clients, rate in figures["throughput"].items()],
    )
    return (
        f"{HEADING}\n\n`python -m benchmarks.serve`: `tinycats serve` in its own process on this "
        f"machine's CPU ({os.cpu_count()} cores, load average {figures['load']:.1f} when it "
        f"started: other jobs shared the cores), over HTTP on the loopback; warm latency over "
        f"{repeats} classify and {draws} draw requests, requests/s over {requests} classify "
        "requests.\n\n"
        f"{latency}\n\n{start}\n\n{rates}\n"
    )


def section_of(path: Path) -> str:
    """The serving section a results file holds (with a blank line before it), or nothing."""
    return kept_section(path, HEADING)


def write_section(path: Path, section: str) -> None:
    """Replace (or add) the serving section of the results file."""
    replace_section(path, HEADING, section)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="results file whose serving section to replace")
    parser.add_argument("--repeats", type=int, default=50, help="timed classify requests")
    parser.add_argument("--draws", type=int, default=10, help="timed draw requests")
    parser.add_argument("--requests", type=int, default=100, help="requests per concurrency")
    parser.add_argument(
        "--runs_dir",
        type=Path,
        help="serve these runs instead of training the demo configs one step",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outputs = args.runs_dir or Path(tmp) / "outputs"
        if not args.runs_dir:
            train_demo_runs(outputs, Path(tmp) / "data")
        figures = measure(outputs, args.repeats, args.draws, args.requests)
    section = report(figures, args.repeats, args.draws, args.requests)
    print(section)
    if args.out:
        write_section(args.out, section)


if __name__ == "__main__":
    main()
