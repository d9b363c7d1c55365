"""Shared test fixtures: the real Oxford-IIIT Pet sample (data/sample), broken images, archives, a local server.

`make_broken_images` is a plain function, not a fixture: `from conftest import make_broken_images`.
"""

import hashlib
import http.server
import io
import os
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

PETS_SAMPLE = Path(__file__).resolve().parents[1] / "data/sample/images"


@pytest.fixture(scope="session")
def pets_sample() -> Path:
    """Folder of the 296 real sample photos (`<Breed>_<n>.jpg`) that ship with the repository."""
    return PETS_SAMPLE


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI (``CI`` set, as .ci/run does), a skipped test fails the run: a clone with
    nothing beside it must test everything it ships."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") and skipped and session.exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; CI runs every test.", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- Broken images ---------------------------------------------------------------------------


def make_broken_images(folder: Path) -> dict[str, Path]:
    """Write five cat-named files that are not plain RGB JPEGs into folder and return them by kind.

    Kinds: "truncated" (first 40 % of a real JPEG), "grayscale", "cmyk", "png_as_jpg" (PNG data
    named .jpg) and "not_an_image" (text named .jpg). Names start with a cat breed, so they land
    in cat classes.
    """
    source = sorted(PETS_SAMPLE.glob("Bengal_*.jpg"))[0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        kind: folder / f"Bengal_{9001 + i}.jpg"
        for i, kind in enumerate(("truncated", "grayscale", "cmyk", "png_as_jpg", "not_an_image"))
    }
    data = source.read_bytes()
    paths["truncated"].write_bytes(data[: len(data) * 2 // 5])
    with Image.open(source) as photo:
        photo.convert("L").save(paths["grayscale"], format="JPEG")
        photo.convert("CMYK").save(paths["cmyk"], format="JPEG")
        photo.save(paths["png_as_jpg"], format="PNG")
    paths["not_an_image"].write_text("This is a text file, not a photo of a Bengal cat.\n")
    return paths


# --- Oxford-IIIT Pet archives ----------------------------------------------------------------


@dataclass(frozen=True)
class OxfordArchives:
    """Archives in the Oxford-IIIT Pet layout, in `folder`, with their MD5 per file name."""

    folder: Path
    checksums: dict[str, str]
    image_names: frozenset[str]


def _list_txt(image_names: list[str]) -> str:
    """Build annotations/list.txt in the dataset's format: `Name CLASS-ID SPECIES BREED-ID`."""
    breed_of = {name: name.rsplit(".", 1)[0].rsplit("_", 1)[0] for name in image_names}
    breeds = sorted(set(breed_of.values()), key=str.lower)
    cats = [b for b in breeds if b[0].isupper()]
    dogs = [b for b in breeds if not b[0].isupper()]
    lines = [
        "#Image CLASS-ID SPECIES BREED ID",
        f"#ID: 1:{len(breeds)} Class ids",
        "#SPECIES: 1:Cat 2:Dog",
        f"#BREED ID: 1-{len(cats)}:Cat 1:{len(dogs)}:Dog",
        "#All images with 1st letter as captial are cat images",
        "#images with small first letter are dog images",
    ]
    for name in sorted(image_names, key=str.lower):
        breed = breed_of[name]
        species, same_species = (1, cats) if breed in cats else (2, dogs)
        class_id = breeds.index(breed) + 1
        breed_id = same_species.index(breed) + 1
        lines.append(f"{name.rsplit('.', 1)[0]} {class_id} {species} {breed_id}")
    return "\n".join(lines) + "\n"


def _md5(path: Path) -> str:
    """Return the hex MD5 of a file."""
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture(scope="session")
def oxford_archives(pets_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> OxfordArchives:
    """images.tar.gz (296 sample photos + the broken files) and annotations.tar.gz (list.txt)."""
    broken = make_broken_images(tmp_path_factory.mktemp("broken"))
    images = sorted(pets_sample.glob("*.jpg")) + sorted(broken.values())
    folder = tmp_path_factory.mktemp("oxford-archives")
    # JPEGs do not compress: the fastest level keeps building the archive under a second.
    with tarfile.open(folder / "images.tar.gz", "w:gz", compresslevel=1) as tar:
        for image in images:
            tar.add(image, arcname=f"images/{image.name}")
    list_txt = _list_txt([image.name for image in images]).encode()
    with tarfile.open(folder / "annotations.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("annotations/list.txt")
        info.size = len(list_txt)
        tar.addfile(info, io.BytesIO(list_txt))
    checksums = {name: _md5(folder / name) for name in ("images.tar.gz", "annotations.tar.gz")}
    return OxfordArchives(folder, checksums, frozenset(image.name for image in images))


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
