"""Shared test fixtures: the real Oxford-IIIT Pet sample (data/sample), archives, a local server,
the real `tinycats` command. Plain helpers live in tests/helpers/ (`from helpers.photos import ...`)."""

import http.server
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from helpers.commands import tiny_overrides
from helpers.photos import (
    OxfordArchives,
    build_oxford_archives,
    make_broken_images,
    pets_sample_images,
)


@pytest.fixture(scope="session")
def pets_sample() -> Path:
    """Folder of the 296 real sample photos (`<Breed>_<n>.jpg`) that ship with the repository."""
    return pets_sample_images()


@pytest.fixture(autouse=True)
def attempt_stays_in_its_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a launcher tells its attempt through the environment (the Modal attempt, the
    program) and the record a process keeps end with the test that set them: a later test's
    subprocess must not continue an earlier test's attempt."""
    from tinycats.runs import ledger, ledger_keeper

    for name in (ledger.STARTED_ENV, ledger.GPU_ENV, ledger.PRICE_ENV, ledger_keeper.LEDGER_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ledger_keeper, "_current", None)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI (``CI`` set, as .ci/run does), a skipped test fails the run: a clone with
    nothing beside it must test everything it ships."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") and skipped and session.exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; CI runs every test.", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# The CPU kinds this project lands on, as torch describes them: cpuinfo's features and the
# instruction set ATen dispatches to (ATEN_CPU_CAPABILITY=avx2 forces the latter down).
CPU_KINDS = {
    "avx2": ({"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}, "AVX2"),
    "avx512_bf16": (
        {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": False},
        "AVX512",
    ),
    "amx": ({"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}, "AVX512"),
}


@pytest.fixture(params=list(CPU_KINDS))
def cpu_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each CPU kind in turn (AMD Zen 3, AMD Zen 4, Intel with AMX), as the precision rule sees
    it, on any machine: the test runs once per kind and gets its name."""
    import torch

    capabilities, isa = CPU_KINDS[request.param]
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    return request.param


@pytest.fixture(scope="session")
def run_tinycats(pets_sample: Path) -> Callable[..., Any]:
    """Factory: ``run_tinycats(command, config, outputs, *overrides)`` runs the real ``tinycats``
    command (its ``main``, in this process) on a tiny config with the sample photos, its runs and
    data cache under ``outputs``; returns what ``run_cli`` returns (the summary after fit)."""
    from tinycats.cli import run_cli, show_logs

    def run(command: str, config: Path, outputs: Path, *overrides: str) -> Any:
        show_logs()
        return run_cli(
            [command, "-c", str(config), *tiny_overrides(outputs, pets_sample), *overrides]
        )

    return run


# --- Oxford-IIIT Pet archives ----------------------------------------------------------------


@pytest.fixture(scope="session")
def oxford_archives(pets_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> OxfordArchives:
    """images.tar.gz (296 sample photos + the broken files) and annotations.tar.gz (list.txt)."""
    broken = make_broken_images(tmp_path_factory.mktemp("broken"))
    images = sorted(pets_sample.glob("*.jpg")) + sorted(broken.values())
    return build_oxford_archives(images, tmp_path_factory.mktemp("oxford-archives"))


# --- Loopback HTTP server --------------------------------------------------------------------


@dataclass
class LoopbackServer:
    """A running local HTTP server: its base `url` (ending in "/") and the paths requested."""

    url: str
    requests: list[str] = field(default_factory=list)


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder, records each request path on the server, and logs nothing."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def do_HEAD(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_HEAD()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    """Ignores clients that hang up mid-response (torchvision's redirect probe does that)."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def loopback_server() -> Iterator[Callable[[Path], LoopbackServer]]:
    """Factory: `loopback_server(folder)` serves folder on 127.0.0.1 until the test ends."""
    running: list[tuple[_QuietServer, threading.Thread]] = []

    def serve(folder: Path) -> LoopbackServer:
        server = _QuietServer(("127.0.0.1", 0), partial(_RecordingHandler, directory=str(folder)))
        served = LoopbackServer(url=f"http://127.0.0.1:{server.server_address[1]}/")
        server.requests = served.requests  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        running.append((server, thread))
        return served

    yield serve
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
