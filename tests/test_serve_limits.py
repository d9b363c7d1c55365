"""The classify API's photo limit, quick: an untrained classifier stands in for a trained run."""

import io
from pathlib import Path

import pytest
from PIL import Image

from tinycats.commands.serve_api import build_app
from tinycats.commands.serve_models import Limits, LoadedRun, ModelStore
from tinycats.models import CatClassifier

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def client_with_a_classifier(runs: Path, **limits):
    """A test client over a store whose default classifier is an untrained ResNet-18."""
    from fastapi.testclient import TestClient

    store = ModelStore(runs, Limits(**limits))
    (runs / "untrained").mkdir()
    model = CatClassifier(num_classes=2, class_names=["cat", "dog"]).eval()
    store.loaded["classifier"]["untrained"] = LoadedRun(
        "classifier", "untrained", "last.ckpt", 0, {}, ["cat", "dog"], 16, model
    )
    store.default["classifier"] = "untrained"
    return TestClient(build_app(store))


def photos(n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    png = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 100, 50)).save(png, format="PNG")
    return [("file", (f"cat{i}.png", png.getvalue(), "image/png")) for i in range(n)]


def test_a_request_may_carry_exactly_max_files_photos_and_no_more(tmp_path: Path) -> None:
    client = client_with_a_classifier(tmp_path, max_files=3)
    answer = client.post("/api/classify", files=photos(3))
    assert answer.status_code == 200, answer.text
    assert [r["filename"] for r in answer.json()["results"]] == ["cat0.png", "cat1.png", "cat2.png"]
    refused = client.post("/api/classify", files=photos(4))
    assert refused.status_code == 413
    assert refused.json()["detail"] == "4 photos in one request; the limit is 3."
