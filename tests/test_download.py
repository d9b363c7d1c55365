"""ensure_oxford_pets against a loopback server: download once, verify, install atomically."""

import logging
import shutil
import socket
from pathlib import Path
from unittest.mock import Mock

import pytest

from tinycats.data.download import DatasetDownloadError, ensure_oxford_pets
from tinycats.errors import TinyCatsError, TransientError

from helpers.photos import OxfordArchives


def _leftovers(root: Path) -> list[str]:
    """Names under root that a failed call must not leave behind."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".download-", "oxford")))


def _assert_installed(dataset: Path, archives: OxfordArchives) -> None:
    """Fail unless dataset holds every archived image, list.txt and the completion marker."""
    assert dataset.name == "oxford-iiit-pet"
    assert {p.name for p in (dataset / "images").iterdir()} == archives.image_names
    assert len(archives.image_names) == 296 + 5
    assert (dataset / "annotations" / "list.txt").is_file()
    assert (dataset / ".complete").is_file()
    assert not list(dataset.parent.glob(".download-*"))


def test_downloads_verifies_and_installs_once(
    tmp_path: Path, oxford_archives: OxfordArchives, loopback_server, caplog
) -> None:
    server = loopback_server(oxford_archives.folder)
    commit = Mock()

    with caplog.at_level(logging.INFO, logger="tinycats.data.download"):
        dataset = ensure_oxford_pets(
            tmp_path, base_url=server.url, checksums=oxford_archives.checksums, commit=commit
        )

    assert dataset == tmp_path / "oxford-iiit-pet"
    _assert_installed(dataset, oxford_archives)
    commit.assert_called_once_with()
    assert {"/images.tar.gz", "/annotations.tar.gz"} == set(server.requests)
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO"]

    requests_before = list(server.requests)
    again = ensure_oxford_pets(
        tmp_path, base_url=server.url, checksums=oxford_archives.checksums, commit=commit
    )
    assert again == dataset
    assert server.requests == requests_before
    commit.assert_called_once_with()


def test_wrong_checksum_names_the_file_and_leaves_nothing(
    tmp_path: Path, oxford_archives: OxfordArchives, loopback_server
) -> None:
    server = loopback_server(oxford_archives.folder)
    actual = oxford_archives.checksums["images.tar.gz"]
    checksums = {**oxford_archives.checksums, "images.tar.gz": "0" * 32}
    commit = Mock()

    with pytest.raises(DatasetDownloadError) as raised:
        ensure_oxford_pets(tmp_path, base_url=server.url, checksums=checksums, commit=commit)

    message = str(raised.value)
    assert "images.tar.gz" in message
    assert "0" * 32 in message
    assert actual in message
    assert _leftovers(tmp_path) == []
    commit.assert_not_called()


def test_no_network_explains_how_to_place_the_archives(
    tmp_path: Path, oxford_archives: OxfordArchives
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/"
    root = tmp_path / "data"

    with pytest.raises(DatasetDownloadError) as raised:
        ensure_oxford_pets(root, base_url=base_url, checksums=oxford_archives.checksums)

    message = str(raised.value)
    assert f"{base_url}images.tar.gz" in message
    assert str(root) in message
    assert "by hand" in message
    assert str(root / "images.tar.gz") in message
    assert str(root / "annotations.tar.gz") in message
    assert "folder of images" in message
    assert _leftovers(root) == []


def test_archives_placed_by_hand_are_used_without_a_request(
    tmp_path: Path, oxford_archives: OxfordArchives, loopback_server
) -> None:
    server = loopback_server(oxford_archives.folder)
    for name in oxford_archives.checksums:
        shutil.copy(oxford_archives.folder / name, tmp_path / name)
    commit = Mock()

    dataset = ensure_oxford_pets(
        tmp_path, base_url=server.url, checksums=oxford_archives.checksums, commit=commit
    )

    _assert_installed(dataset, oxford_archives)
    assert server.requests == []
    commit.assert_called_once_with()
    assert (tmp_path / "images.tar.gz").is_file()


def test_corrupt_archive_placed_by_hand_is_reported_and_kept(
    tmp_path: Path, oxford_archives: OxfordArchives, loopback_server
) -> None:
    server = loopback_server(oxford_archives.folder)
    placed = tmp_path / "images.tar.gz"
    placed.write_bytes((oxford_archives.folder / "images.tar.gz").read_bytes()[:1000])

    with pytest.raises(TinyCatsError, match="placed there by hand") as raised:
        ensure_oxford_pets(tmp_path, base_url=server.url, checksums=oxford_archives.checksums)

    assert str(placed) in str(raised.value)
    assert not isinstance(raised.value, TransientError)  # a wrong file: retrying cannot help
    assert placed.stat().st_size == 1000
    assert server.requests == []
    assert _leftovers(tmp_path) == []


def test_leftovers_of_a_killed_attempt_do_not_break_the_next_call(
    tmp_path: Path, oxford_archives: OxfordArchives, loopback_server
) -> None:
    server = loopback_server(oxford_archives.folder)
    stale = tmp_path / ".download-killed"
    (stale / "oxford-iiit-pet" / "images").mkdir(parents=True)
    (stale / "images.tar.gz").write_bytes(b"half an archive")

    dataset = ensure_oxford_pets(tmp_path, base_url=server.url, checksums=oxford_archives.checksums)

    _assert_installed(dataset, oxford_archives)
    assert not stale.exists()


def test_a_half_installed_dataset_folder_is_installed_again(
    tmp_path: Path, oxford_archives: OxfordArchives, loopback_server, caplog
) -> None:
    # An install killed after the folder was moved into place but before it was marked.
    server = loopback_server(oxford_archives.folder)
    half = tmp_path / "oxford-iiit-pet"
    (half / "images").mkdir(parents=True)
    (half / "images" / "Bengal_1.jpg").write_bytes(b"half a photo")

    dataset = ensure_oxford_pets(tmp_path, base_url=server.url, checksums=oxford_archives.checksums)

    _assert_installed(dataset, oxford_archives)
    assert "an earlier install was cut short" in caplog.text
    assert _leftovers(tmp_path) == ["oxford-iiit-pet"]


def test_download_errors_are_transient_and_wrong_files_are_not() -> None:
    assert issubclass(DatasetDownloadError, TransientError)
    assert not issubclass(TinyCatsError, TransientError)
