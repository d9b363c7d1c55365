"""The ``tinycats serve`` API's refusals, quick: the byte limits, the runs-folder check and the
per-client budget, through FastAPI's test client over stub models (no training, no server)."""

import os
from pathlib import Path

import pytest
import torch

from tinycats.commands.serve_api import MULTIPART_OVERHEAD, build_app
from tinycats.commands.serve_budget import NO_BUDGET, Budget, ClientBudgets
from tinycats.commands.serve_models import Limits, LoadedRun, ModelStore

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

CLASSIFIER_RUN, DIT_RUN = "checkpoints/classifier/stub", "checkpoints/dit/stub"
BREEDS = ["Bengal", "Sphynx"]


class StubClassifier(torch.nn.Module):
    """Two logits per photo from its mean colour: any answer does; the refusals come first."""

    device = torch.device("cpu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))[:, :2]


class StubDiT(torch.nn.Module):
    """Seeded noise as 8 px cats, in the shape the DiT's ``generate`` gives."""

    device = torch.device("cpu")
    cpu_bf16 = False

    def generate(self, labels: torch.Tensor, seed: int, steps: int, cfg_scale: float):
        return torch.rand(len(labels), 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def stub_store(runs: Path, **limits: int) -> ModelStore:
    """A store whose default classifier and DiT are the stubs, as if loaded from ``runs``."""
    store = ModelStore(runs, Limits(**limits))
    for kind, run, model, classes in (
        ("classifier", CLASSIFIER_RUN, StubClassifier(), ["cat", "dog"]),
        ("dit", DIT_RUN, StubDiT(), BREEDS),
    ):
        (runs / run).mkdir(parents=True)
        store.loaded[kind][run] = LoadedRun(kind, run, "last.ckpt", 1, {}, classes, 16, model)
        store.default[kind] = run
    return store


def client_for(store: ModelStore, budget: Budget = NO_BUDGET, address: str = "203.0.113.1"):
    """A test client at ``address`` of the app over ``store``."""
    return client_at(build_app(store, budget), address)


def client_at(app, address: str):
    from fastapi.testclient import TestClient

    return TestClient(app, client=(address, 50000))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture
def photo(pets_sample: Path) -> bytes:
    return sorted(pets_sample.glob("Bengal_*.jpg"))[0].read_bytes()


def upload(client, *photos: bytes, run: str | None = None):
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    return client.post("/api/classify", files=files, params={"run": run} if run else {})


# --- The byte limits ---------------------------------------------------------------------------


def test_a_photo_one_byte_over_the_limit_is_refused_and_one_at_it_is_classified(runs, photo):
    at_limit = client_for(stub_store(runs, max_upload_bytes=len(photo)))
    assert upload(at_limit, photo).status_code == 200
    over = client_for(stub_store(runs / "over", max_upload_bytes=len(photo) - 1))
    answer = upload(over, photo)
    assert answer.status_code == 413, answer.text
    assert f"{len(photo)} bytes; the limit is {len(photo) - 1}" in answer.json()["detail"]


def test_a_declared_length_over_the_allowance_is_refused_before_the_body_is_read(runs):
    client = client_for(stub_store(runs, max_upload_bytes=1000, max_files=2))
    allowed = 2 * 1000 + MULTIPART_OVERHEAD
    answer = upload(client, b"\0" * (allowed + 1))
    assert answer.status_code == 413
    assert answer.json()["detail"] == (
        f"The request has {int(answer.request.headers['content-length'])} bytes; "
        f"the limit is {allowed}."
    )


def test_a_body_streamed_without_a_length_is_cut_off_at_the_allowance(runs):
    client = client_for(stub_store(runs, max_upload_bytes=1000, max_files=2))

    def streamed():
        yield b'--cut\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for _ in range(20):  # 80 kB, over the 66 kB allowance
            yield b"\0" * 4000
        yield b"\r\n--cut--\r\n"

    answer = client.post(
        "/api/classify",
        content=streamed(),
        headers={"content-type": "multipart/form-data; boundary=cut"},
    )
    assert "content-length" not in answer.request.headers
    # FastAPI's route limit, while streaming; not the per-photo check after spooling it all.
    assert answer.status_code == 413 and answer.json()["detail"] == "Content Too Large"
    assert client.get("/api/health").status_code == 200


# --- Runs named by a request stay inside the runs folder ------------------------------------------


def test_runs_outside_the_runs_folder_are_refused(runs, tmp_path, photo):
    client = client_for(stub_store(runs))
    os.symlink(tmp_path, runs / "checkpoints" / "escape")  # inside by name, outside when resolved
    for run in ("..", "../outputs/..", "/etc", str(tmp_path), "checkpoints/escape"):
        for answer in (
            client.get("/api/draw", params={"breed": "Bengal", "n": 1, "run": run}),
            upload(client, photo, run=run),
        ):
            assert answer.status_code == 400, (run, answer.text)
            assert "is outside the runs folder" in answer.json()["detail"]
    inside = client.get("/api/draw", params={"breed": "Bengal", "n": 1, "run": DIT_RUN})
    assert inside.status_code == 200 and inside.headers["x-run"] == DIT_RUN


# --- The per-client budget -------------------------------------------------------------------------


def test_a_client_over_its_request_budget_gets_429_and_the_next_client_is_answered(runs):
    app = build_app(stub_store(runs), Budget(requests_per_minute=3))
    first = client_at(app, "203.0.113.1")
    answers = [first.get("/api/health") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    assert answers[-1].json()["detail"] == (
        "Too many requests from 203.0.113.1: the limit is 3 a minute."
    )
    # A header naming another address changes nothing: the connection's address counts.
    spoofed = first.get("/api/health", headers={"X-Forwarded-For": "198.51.100.9"})
    assert spoofed.status_code == 429
    assert client_at(app, "203.0.113.2").get("/api/health").status_code == 200


def test_drawings_have_their_own_smaller_budget(runs, photo):
    client = client_for(stub_store(runs), Budget(requests_per_minute=10, draws_per_minute=2))
    draw = {"breed": "Bengal", "n": 1, "steps": 1}
    assert [client.get("/api/draw", params=draw).status_code for _ in range(3)] == [200, 200, 429]
    refused = client.get("/api/draw", params=draw)
    assert (
        refused.json()["detail"] == "Too many drawings from 203.0.113.1: the limit is 2 a minute."
    )
    assert "retry-after" in refused.headers
    # Classifying goes on, within the request budget: the 2 drawings counted, the refusals not.
    assert upload(client, photo).status_code == 200
    assert [client.get("/api/health").status_code for _ in range(8)] == [200] * 7 + [429]


def test_no_budget_refuses_nothing(runs):
    client = client_for(stub_store(runs))
    assert {client.get("/api/health").status_code for _ in range(100)} == {200}


def test_the_window_turns_each_minute_and_retry_after_says_when():
    now = [90.0]  # 30 s into the second window
    budgets = ClientBudgets(Budget(requests_per_minute=1, draws_per_minute=1), clock=lambda: now[0])
    assert budgets.charge("a", drawing=True) is None
    refusal = budgets.charge("a", drawing=False)
    assert refusal is not None and refusal.retry_after_s == 30
    now[0] = 119.2
    assert budgets.charge("a", drawing=True).retry_after_s == 1  # rounded up, never 0
    now[0] = 120.0  # the next window: counts start again
    assert budgets.charge("a", drawing=True) is None
    assert budgets.charge("b", drawing=True) is None


def test_the_command_takes_the_budget_as_options_and_logs_it(runs, monkeypatch, caplog):
    import logging

    import uvicorn
    from fastapi.testclient import TestClient

    from tinycats.cli import main
    from tinycats.commands import serve

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    monkeypatch.setattr(serve, "load_store", lambda runs_dir, *args: stub_store(runs_dir))
    with caplog.at_level(logging.INFO, logger="tinycats"):
        main(["serve", "--runs_dir", str(runs), "--budget.draws_per_minute", "1"])
    assert "Per-client budget: unlimited requests and 1 drawings a minute" in caplog.text
    client = TestClient(served[0])
    draw = {"breed": "Sphynx", "n": 1, "steps": 1}
    assert [client.get("/api/draw", params=draw).status_code for _ in range(2)] == [200, 429]


def test_the_old_generator_flag_still_names_the_dit_run(runs, monkeypatch, caplog):
    import logging

    import uvicorn

    from tinycats.cli import main
    from tinycats.commands import serve

    chosen = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    monkeypatch.setattr(
        serve,
        "load_store",
        lambda runs_dir, *args: chosen.append(args[:2]) or stub_store(runs_dir / str(len(chosen))),
    )
    with caplog.at_level(logging.WARNING, logger="tinycats"):
        main(["serve", "--runs_dir", str(runs), "--generator", "dit/old"])
        main(["serve", "--runs_dir", str(runs), "--dit", "dit/new", "--classifier", ""])
    assert chosen == [("newest", "dit/old"), ("", "dit/new")]
    assert caplog.text.count("--generator is deprecated: use --dit") == 1


def test_a_negative_budget_is_refused_with_the_option_named(runs, capsys):
    from tinycats.cli import main

    with pytest.raises(SystemExit) as refused:
        main(["serve", "--runs_dir", str(runs), "--budget.draws_per_minute", "-3"])
    assert refused.value.code == 2
    assert "--budget.draws_per_minute -3 is negative: set 0 for no limit" in capsys.readouterr().err


def test_over_http_each_client_address_has_its_own_budget(runs):
    """Through uvicorn on the loopback, from two source addresses, as a deployment sees them."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build_app(stub_store(runs), Budget(requests_per_minute=2))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:

        def client(address: str) -> httpx.Client:
            transport = httpx.HTTPTransport(local_address=address)
            return httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport)

        with client("127.0.0.2") as first, client("127.0.0.3") as second:
            answers = [first.get("/api/health") for _ in range(3)]
            assert [a.status_code for a in answers] == [200, 200, 429]
            assert answers[-1].json()["detail"].startswith("Too many requests from 127.0.0.2")
            assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
            assert second.get("/api/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
