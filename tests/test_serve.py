"""``tinycats serve`` through the ASGI test client, on a tiny classifier and a tiny DiT trained
once by the real command: answers, and a clear 4xx for every kind of bad input."""

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers.photos import make_broken_images

pytestmark = [
    pytest.mark.slow,  # the two tiny runs take ~25 s on an idle machine
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

TIMEOUT = 300
CLASSIFIER_RUN = "checkpoints/classifier/2026-01-02/tiny"
DIT_RUN = "checkpoints/dit/2026-01-02/tiny"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pets_sample: Path) -> Path:
    """A runs folder with a tiny classifier and a tiny DiT, both trained by ``tinycats fit``."""
    tmp = tmp_path_factory.mktemp("serve")

    def fit(model: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tinycats",
                "fit",
                "-c",
                f"tests/configs/{model}_tiny.yaml",
                f"--run.outputs={tmp / 'outputs'}",
                f"--data.root={tmp / model}",
                f"--data.source={pets_sample}",
                "--run.date=2026-01-02",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    fits = [fit("classifier"), fit("dit")]  # both at once: two processes on two cores
    for fit in fits:
        output = fit.communicate(timeout=TIMEOUT)[0]
        assert fit.returncode == 0, output[-3000:]
    return tmp / "outputs"


def client_for(runs: Path, classifier: str = "newest", generator: str = "newest", **limits):
    from fastapi.testclient import TestClient

    from tinycats.commands.serve import load_store
    from tinycats.commands.serve_api import build_app
    from tinycats.commands.serve_models import Limits

    return TestClient(build_app(load_store(runs, classifier, generator, Limits(**limits))))


@pytest.fixture(scope="module")
def client(runs: Path):
    """The app with small limits, so that each limit is cheap to cross."""
    return client_for(runs, max_upload_bytes=300_000, max_pixels=1_000_000, max_n=6, max_steps=8)


def photo(pets_sample: Path, breed: str = "Bengal") -> tuple[str, bytes]:
    path = sorted(pets_sample.glob(f"{breed}_*.jpg"))[0]
    return path.name, path.read_bytes()


def upload(client, *files: tuple[str, bytes]):
    return client.post("/api/classify", files=[("file", (n, d, "image/jpeg")) for n, d in files])


# --- Answers -----------------------------------------------------------------------------------


def test_health_and_the_loaded_runs(client) -> None:
    assert client.get("/api/health").json() == {"status": "ok"}
    models = {m["kind"]: m for m in client.get("/api/models").json()["models"]}
    assert models["classifier"]["run"] == CLASSIFIER_RUN and models["classifier"]["step"] == 8
    assert models["classifier"]["classes"] == ["cat", "dog"]
    assert 0 <= models["classifier"]["metrics"]["val/acc"] <= 1
    assert models["dit"]["run"] == DIT_RUN and models["dit"]["step"] == 4
    assert "Bengal" in models["dit"]["classes"] and models["dit"]["default"]


def test_classify_gives_what_the_model_gives_on_the_training_decode(client, runs, pets_sample):
    import torch

    from tinycats.data.images import load_square
    from tinycats.models.classifier import CatClassifier
    from tinycats.networks.augment import to_unit_range

    names = [p.name for p in sorted(pets_sample.glob("*.jpg"))[::70]]  # cats and dogs
    answer = upload(client, *[(n, (pets_sample / n).read_bytes()) for n in names])
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    model = CatClassifier.load_from_checkpoint(runs / CLASSIFIER_RUN / "last.ckpt", weights=None)
    model.eval()
    images = torch.stack([load_square(pets_sample / n, 24)[0] for n in names])
    with torch.no_grad():
        expected = model(to_unit_range(images)).softmax(-1)
    assert [r["filename"] for r in results] == names
    for result, probabilities in zip(results, expected.tolist(), strict=True):
        assert list(result["probabilities"]) == ["cat", "dog"]
        assert list(result["probabilities"].values()) == pytest.approx(probabilities, abs=1e-5)
        assert result["label"] == ["cat", "dog"][probabilities.index(max(probabilities))]
        assert result["probability"] == pytest.approx(max(probabilities), abs=1e-5)


def test_draw_gives_the_sample_commands_grid_and_the_same_bytes_for_the_same_seed(
    client, runs, tmp_path
) -> None:
    from tinycats.commands.sample import main as sample_main

    query = {"breed": "maine coon", "n": 3, "steps": 2, "cfg_scale": 2.0, "seed": 7}
    first = client.get("/api/draw", params=query)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert client.get("/api/draw", params=query).content == first.content
    strong = client.get("/api/draw", params=query | {"cfg_scale": 20.0}).content
    old_name = {k: v for k, v in query.items() if k != "cfg_scale"} | {"guidance": 20.0}
    assert client.get("/api/draw", params=old_name).content == strong != first.content
    assert client.get("/api/draw", params=query | {"seed": 8}).content != first.content
    sample_main(
        [
            "--ckpt_path",
            str(runs / DIT_RUN),
            "--breed",
            "Maine_Coon",
            "--n",
            "3",
            "--steps",
            "2",
            "--cfg_scale",
            "2.0",
            "--seed",
            "7",
            "--out",
            str(tmp_path / "grid.png"),
        ]
    )
    with Image.open(io.BytesIO(first.content)) as served, Image.open(tmp_path / "grid.png") as cli:
        assert served.size == cli.size
        assert served.convert("RGB").tobytes() == cli.convert("RGB").tobytes()
    every_breed = client.get("/api/draw", params={"breed": "all", "n": 1, "steps": 1})
    with Image.open(io.BytesIO(every_breed.content)) as grid:
        assert grid.height == 12 * (16 + 2) + 2  # a row per breed


def test_the_page_is_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="drop"' in page.text and "api/classify" in page.text and "api/draw" in page.text


# --- Bad input: a clear 4xx, and the server keeps answering --------------------------------------


def test_broken_and_foreign_files_are_refused(client, tmp_path) -> None:
    broken = make_broken_images(tmp_path)
    for kind, status, message in (
        ("not_an_image", 400, "Not an image"),
        ("truncated", 400, "broken image (truncated or corrupt)"),
    ):
        answer = upload(client, (broken[kind].name, broken[kind].read_bytes()))
        assert answer.status_code == status, answer.text
        assert message in answer.json()["detail"] and broken[kind].name in answer.json()["detail"]
    # Converted kinds are photos all the same.
    for kind in ("grayscale", "cmyk", "png_as_jpg"):
        assert upload(client, (broken[kind].name, broken[kind].read_bytes())).status_code == 200
    assert client.get("/api/health").status_code == 200


def test_decompression_bombs_are_refused_from_the_header(client, runs) -> None:
    def png(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("1", (width, height)).save(buffer, format="PNG")
        return buffer.getvalue()

    over_our_limit = png(1001, 1000)  # a few kB, over max_pixels=1_000_000
    answer = upload(client, ("bomb.png", over_our_limit))
    assert answer.status_code == 413 and "limit is 1000000 pixels" in answer.json()["detail"]
    assert upload(client, ("ok.png", png(1000, 1000))).status_code == 200
    # 400 megapixels in ~50 kB, past PIL's own bomb limit, with the default limits.
    answer = upload(client_for(runs), ("bomb.png", png(20_000, 20_000)))
    assert answer.status_code == 413, answer.text


def test_oversized_uploads_are_refused(client, pets_sample) -> None:
    big = b"\xff\xd8" + b"\0" * 300_000
    answer = upload(client, ("big.jpg", big))  # Content-Length within the many-files allowance
    assert answer.status_code == 413 and "the limit is 300000" in answer.json()["detail"]
    huge = b"\0" * (16 * 300_000 + 100_000)  # over every allowance: refused from the header
    answer = upload(client, ("huge.jpg", huge))
    assert answer.status_code == 413 and "bytes; the limit is" in answer.json()["detail"]
    answer = upload(client, *[photo(pets_sample)] * 17)
    assert answer.status_code == 413 and "17 photos" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ({"breed": "Tabby"}, 422, "Unknown breed 'Tabby'. This model knows: all, Abyssinian"),
        ({"breed": "Bengal", "n": 0}, 422, "n: Input should be greater than or equal to 1"),
        ({"breed": "Bengal", "n": 7}, 422, "n: Input should be less than or equal to 6"),
        ({"breed": "Bengal", "steps": 9}, 422, "steps: Input should be less than or equal to 8"),
        ({"breed": "Bengal", "steps": "many"}, 422, "steps: Input should be a valid integer"),
        ({"breed": "Bengal", "cfg_scale": -1}, 422, "cfg_scale: Input should be greater than"),
        ({"breed": "Bengal", "guidance": -1}, 422, "guidance: Input should be greater than"),
        ({}, 422, "breed: Field required"),
        ({"breed": "Bengal", "run": "../../.."}, 400, "is outside the runs folder"),
        ({"breed": "Bengal", "run": "/etc"}, 400, "is outside the runs folder"),
        ({"breed": "Bengal", "run": "checkpoints/dit/nope"}, 404, "No run or checkpoint"),
        ({"breed": "Bengal", "run": CLASSIFIER_RUN}, 422, "not of the DiT generator"),
    ],
)
def test_bad_drawing_requests_are_refused(client, query, status, message) -> None:
    answer = client.get("/api/draw", params=query)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]


def test_a_classify_request_for_a_run_outside_the_runs_folder_is_refused(client, pets_sample):
    for run in ("..", "/tmp", f"../{CLASSIFIER_RUN}"):
        answer = client.post(
            "/api/classify", params={"run": run}, files={"file": photo(pets_sample)}
        )
        assert answer.status_code == 400, answer.text
        assert "outside the runs folder" in answer.json()["detail"]


def test_runs_named_by_requests_load_once_and_the_least_recently_used_is_evicted(runs) -> None:
    client = client_for(runs, max_runs=2)

    def loaded() -> list[tuple[str, int]]:
        models = client.get("/api/models").json()["models"]
        return [(m["checkpoint"], m["step"]) for m in models if m["kind"] == "dit"]

    for checkpoint, expected in (
        ("step=00000002.ckpt", [("last.ckpt", 4), ("step=00000002.ckpt", 2)]),
        ("step=00000004.ckpt", [("last.ckpt", 4), ("step=00000004.ckpt", 4)]),  # 2 evicted
        ("step=00000004.ckpt", [("last.ckpt", 4), ("step=00000004.ckpt", 4)]),  # kept
    ):
        answer = client.get(
            "/api/draw",
            params={"breed": "Bengal", "n": 1, "steps": 1, "run": f"{DIT_RUN}/{checkpoint}"},
        )
        assert answer.status_code == 200 and answer.headers["x-run"] == f"{DIT_RUN}/{checkpoint}"
        assert loaded() == expected


def test_a_model_that_is_not_loaded_is_named(runs, pets_sample) -> None:
    only_dit = client_for(runs, classifier="")
    answer = only_dit.post("/api/classify", files={"file": photo(pets_sample)})
    assert answer.status_code == 404 and "No classifier run is loaded" in answer.json()["detail"]
    kinds = [m["kind"] for m in only_dit.get("/api/models").json()["models"]]
    assert kinds == ["dit"]


def test_the_command_refuses_what_it_cannot_serve(runs, tmp_path) -> None:
    from tinycats.commands.serve import load_store
    from tinycats.commands.serve_models import Limits
    from tinycats.errors import TinyCatsError

    with pytest.raises(TinyCatsError, match="No classifier or DiT run to serve"):
        load_store(tmp_path, "newest", "newest", Limits())
    with pytest.raises(TinyCatsError, match="is outside the runs folder"):
        load_store(runs, "/etc", "", Limits())
    with pytest.raises(TinyCatsError, match=r"--runs_dir .* is not a folder"):
        load_store(tmp_path / "nope", "newest", "newest", Limits())


def test_the_command_serves_on_the_loopback_unless_told(runs, monkeypatch) -> None:
    import uvicorn

    from tinycats.cli import main

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(kwargs))
    main(["serve", "--runs_dir", str(runs)])
    main(["serve", "--runs_dir", str(runs), "--host", "0.0.0.0", "--port", "8080"])
    assert [(s["host"], s["port"]) for s in served] == [("127.0.0.1", 8000), ("0.0.0.0", 8080)]
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--runs_dir", str(runs / "nope")])
    assert refused.value.code == 2


def test_the_command_reads_its_options_from_a_config_file(runs, monkeypatch, tmp_path) -> None:
    import uvicorn

    from tinycats.cli import main
    from tinycats.commands import serve

    served, limits = [], []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(kwargs))
    load_store = serve.load_store
    monkeypatch.setattr(
        serve, "load_store", lambda *args: limits.append(args[3]) or load_store(*args)
    )
    config = tmp_path / "serve.yaml"
    config.write_text(f"runs_dir: {runs}\nport: 8081\nlimits:\n  max_n: 4\n")
    main(["serve", "-c", str(config)])
    main(["serve", "--config", str(config), "--port", "8082"])  # a later flag wins
    assert [s["port"] for s in served] == [8081, 8082]
    assert [limit.max_n for limit in limits] == [4, 4]
    config.write_text("prot: 8081\n")
    with pytest.raises(SystemExit) as refused:
        main(["serve", "-c", str(config)])
    assert refused.value.code == 2


# --- The web page in a real browser (headless Chromium from the OS packages) --------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def server(runs: Path):
    """The app on a free loopback port, served by uvicorn in a thread, as `tinycats serve` does."""
    import socket
    import threading
    import time

    import uvicorn

    from tinycats.commands.serve import load_store
    from tinycats.commands.serve_api import build_app
    from tinycats.commands.serve_models import Limits

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build_app(load_store(runs, "newest", "newest", Limits()))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by Selenium through the OS's chromedriver (nothing downloaded)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"needs Chromium at {CHROMIUM} and {CHROMEDRIVER}: "
            "apt-get install -y chromium chromium-driver (.ci/run does)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def test_the_page_classifies_an_uploaded_photo_and_draws_a_grid(server, browser, pets_sample):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shows
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server)
    # The loaded runs are listed, and the breeds of the DiT fill the menu.
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#run-rows tr")) == 2)
    assert DIT_RUN in browser.find_element(By.ID, "run-rows").text
    # Upload a photo: a label and a bar per class appear.
    browser.find_element(By.ID, "file").send_keys(str(sorted(pets_sample.glob("Bengal_*"))[0]))
    wait.until(lambda b: "%" in b.find_element(By.ID, "label").text)
    assert browser.find_element(By.ID, "label").text.split(" (")[0] in ("cat", "dog")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 2
    assert browser.find_element(By.ID, "classify-error").text == ""
    # Draw 3 Bengals: the grid appears as a decoded image.
    Select(browser.find_element(By.ID, "breed")).select_by_value("Bengal")
    for field, value in (("n", "3"), ("steps", "2")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "draw-button").click()
    grid = wait.until(shows.visibility_of_element_located((By.ID, "grid")))
    wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", grid) > 0)
    width, height = browser.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", grid
    )
    assert height == 16 + 2 * 2 and width > 3 * (16 + 2)  # one row of three 16 px cats
    # A refused request shows its reason on the page.
    browser.find_element(By.ID, "n").clear()
    browser.find_element(By.ID, "n").send_keys("99")
    browser.find_element(By.ID, "draw-button").click()
    wait.until(lambda b: "less than or equal to 16" in b.find_element(By.ID, "draw-error").text)


# --- The same app on Modal (src/tinycats/remote.py's Server), offline and without a token --------
# (its settings, quick: tests/test_serve_modal.py)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def remote(runs: Path):
    """remote.py imported as `modal run` imports it, with the trained runs as the outputs volume."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("remote", REPO / "src/tinycats/remote.py")
    module = module_from_spec(spec)
    sys.modules["remote"] = module
    spec.loader.exec_module(module)
    module.STORAGE = module.attempt.Storage(str(runs), str(runs), lambda: None, lambda: None)
    yield module
    del sys.modules["remote"]


@pytest.mark.filterwarnings("ignore:The Server.* executing locally:UserWarning")
def test_a_local_request_through_the_modal_app(remote, pets_sample) -> None:
    from fastapi.testclient import TestClient

    web = TestClient(remote.Server().web.local())
    runs = {m["kind"]: m["run"] for m in web.get("/api/models").json()["models"]}
    assert runs == {"classifier": CLASSIFIER_RUN, "dit": DIT_RUN}
    answer = web.post("/api/classify", files={"file": photo(pets_sample)})
    assert answer.status_code == 200 and answer.json()["results"][0]["label"] in ("cat", "dog")
    drawn = web.get("/api/draw", params={"breed": "Bengal", "n": 2, "steps": 2})
    assert drawn.status_code == 200 and drawn.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert web.get("/api/draw", params={"breed": "Bengal", "run": "/etc"}).status_code == 400


@pytest.mark.filterwarnings("ignore:The Server.* executing locally:UserWarning")
def test_the_warm_sample_method_answers_like_the_runner(remote, client) -> None:
    drawn = remote.Server().sample.local(DIT_RUN, "Bengal", 3, 2, 2.0, 7)
    assert drawn["status"] == "drawn"
    same = client.get(
        "/api/draw", params={"breed": "Bengal", "n": 3, "steps": 2, "cfg_scale": 2.0, "seed": 7}
    )
    assert drawn["png"] == same.content
    for args, message in (
        ((DIT_RUN, "Tabby", 2, 2, 3.0, 0), "Unknown breed 'Tabby'"),
        ((DIT_RUN, "Bengal", 999, 2, 3.0, 0), "--n must be 1 to 16"),
        (("../..", "Bengal", 2, 2, 3.0, 0), "outside the runs folder"),
    ):
        refused = remote.Server().sample.local(*args)
        assert refused["status"] == "refused" and message in refused["error"], refused


def test_modal_run_sample_uses_the_deployed_server_and_falls_back_to_a_runner(
    remote, monkeypatch
) -> None:
    import modal

    class Deployed:
        def hydrate(self):
            return self

        def __call__(self):
            return "the deployed Server"

    monkeypatch.setattr(modal.Cls, "from_name", lambda app, name: Deployed())
    assert remote.sampler() == "the deployed Server"

    def missing(app, name):
        raise modal.exception.NotFoundError(f"App {app} not found")

    monkeypatch.setattr(modal.Cls, "from_name", missing)
    monkeypatch.setattr(remote, "Runner", lambda: "a fresh Runner")
    assert remote.sampler() == "a fresh Runner"


def test_modal_deploy_resolves_the_app_and_stops_only_at_the_missing_token(tmp_path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "TINYCATS_"))} | {
        "HOME": str(tmp_path)
    }
    modal = str(Path(sys.executable).parent / "modal")
    done = subprocess.run(
        [modal, "deploy", "src/tinycats/remote.py"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        env=env,
    )
    assert done.returncode != 0
    assert "Token missing" in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]
    assert "tinycats: Server costs at most 1 × L4 at $0.80/h" in done.stdout  # before the token


# --- The benchmark's report section ----------------------------------------------------------


def test_the_serving_section_replaces_its_old_self_and_survives_the_suite(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.serve import section_of, write_section

    results = tmp_path / "results.md"
    results.write_text("# Benchmarks\n\n## Summary\n\nsuite\n")
    write_section(results, "## Serving\n\nfirst\n")
    write_section(results, "## Serving\n\nsecond\n")
    assert results.read_text() == "# Benchmarks\n\n## Summary\n\nsuite\n\n## Serving\n\nsecond\n"
    # The suite rewrites the file and appends what section_of kept.
    results.write_text("# Benchmarks\n\n## Summary\n\nnew suite\n" + section_of(results))
    assert results.read_text().endswith("new suite\n\n## Serving\n\nsecond\n")
    assert section_of(tmp_path / "absent.md") == ""
