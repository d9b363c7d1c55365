"""The Modal launch's client side (src/tinycats/launch.py), without torch, Modal or a token: the
settings, the checks made before a launch, the run's identity and the fetch commands it prints
(run through Modal's own download code)."""

import re
from pathlib import Path
from types import ModuleType

import pytest

from tinycats import launch
from tinycats.launch import LaunchError

REPO = Path(__file__).resolve().parents[1]
RUN_DATE = "2026-01-02"


@pytest.mark.parametrize(
    ("gpu", "timeout", "retries", "message"),
    [
        ("X100", 60, 3, "Unknown GPU 'X100'. Use one of T4, L4"),
        ("H100:9", 60, 3, "1 to 8 H100 GPUs"),
        ("H100:0", 60, 3, "1 to 8 H100 GPUs"),
        ("A10:5", 60, 3, "1 to 4 A10 GPUs"),
        ("A100:two", 60, 3, "Unknown GPU"),
        ("H100?", 60, 3, "Unknown GPU"),
        ("T4", 0, 3, "outside Modal's range for one attempt, 1 s to 24 h"),
        ("T4", 24 * 3600 + 1, 3, "Set TINYCATS_TIMEOUT"),
        ("T4", 60, -1, "Retries -1 is negative. Set TINYCATS_RETRIES"),
    ],
)
def test_invalid_launch_settings_are_refused_clearly(gpu, timeout, retries, message) -> None:
    with pytest.raises(LaunchError, match=re.escape(message)):
        launch.validate_launch_settings(gpu, timeout, retries)


def test_every_gpu_string_modal_documents_passes() -> None:
    documented = [
        "T4",
        "L4",
        "A10",
        "L40S",
        "A100",
        "A100-40GB",
        "A100-80GB",
        "RTX-PRO-6000",
        "H100",
        "H100!",
        "H200",
        "B200",
        "B200+",
    ]
    for gpu in documented:
        for spelled in (gpu, gpu.lower(), f"{gpu}:1", f"{gpu}:4"):
            launch.validate_launch_settings(spelled, 1, 0)
    for gpu in ("h100!:8", "B200+:8", "rtx-pro-6000:8"):
        launch.validate_launch_settings(gpu, 1, 0)
    launch.validate_launch_settings("L4", 24 * 3600, 10)


MINIMAL = "model: {class_path: tinycats.models.CatClassifier}\ndata: {}\ntrainer: {}\n"


def check_config(launch: ModuleType, text: str, overrides: list[str]) -> dict:
    return launch.check_config(text, "my.yaml", overrides, "/data", "tinycats-data")


def test_check_config_accepts_the_shipped_configs() -> None:
    for name in ("classifier.yaml", "classifier_breeds.yaml", "dit.yaml"):
        path = REPO / "configs" / name
        launch.check_config(path.read_text(), str(path), [], "/data", "tinycats-data")


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("model: [unclosed", [], "is not valid YAML"),
        ("- a list", [], "must be a YAML mapping"),
        (
            "model: {class_path: tinycats.models.CatClassifier}\ndata: {}\n",
            [],
            "no trainer section",
        ),
        (
            "model: {class_path: torch.nn.Linear}\ndata: {}\ntrainer: {}\n",
            [],
            "not a tinycats model; use one of tinycats.models.CatClassifier",
        ),
        (
            "model: {class_path: tinycats.models.CatClassifier}\ndata: {source: ../photos}\n"
            "trainer: {}\n",
            [],
            "modal volume put tinycats-data ../photos photos",
        ),
        (MINIMAL, ["--data.source", "./mine"], "'./mine' is a folder on this computer"),
        (MINIMAL, ["--run.name=x"], "--overrides may not set --run.name=x"),
        (MINIMAL, ["--stop_at=1"], "--overrides may not set --stop_at=1"),
        (MINIMAL, ["--print_config"], "prints and exits without training"),
        (MINIMAL, ["--help"], "tinycats fit -c my.yaml --help"),
    ],
)
def test_check_config_refuses_what_cannot_run_on_modal(text, overrides, message) -> None:
    with pytest.raises(LaunchError, match=re.escape(message)):
        check_config(launch, text, overrides)


@pytest.mark.parametrize(
    ("config", "overrides", "expected"),
    [
        ({}, ["--trainer.max_steps=9"], (["--trainer.max_steps=9"], "")),
        ({}, ["--resume=auto"], ([], "")),
        (
            {},
            ["--resume", "checkpoints/dit/x/a/last.ckpt", "--x=1"],
            (["--x=1"], "checkpoints/dit/x/a/last.ckpt"),
        ),
        ({}, ["--ckpt_path=/outputs/a.ckpt"], ([], "/outputs/a.ckpt")),
        ({"ckpt_path": "a.ckpt"}, [], ([], "a.ckpt")),
        ({"resume": "b.ckpt"}, [], ([], "b.ckpt")),
    ],
)
def test_a_start_checkpoint_is_taken_out_of_the_overrides(config, overrides, expected):
    assert launch.start_checkpoint(config, overrides) == expected


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ({}, ["--resume=never"], "--resume never cannot survive a retry"),
        ({"resume": "never"}, [], "A new --name starts a fresh run"),
        ({}, ["--resume", "latest"], "a run is found by its name"),
        ({}, ["--resume=a.ckpt", "--ckpt_path=b.ckpt"], "not both"),
    ],
)
def test_resume_policies_that_cannot_survive_a_retry_are_refused(config, overrides, message):
    with pytest.raises(LaunchError, match=re.escape(message)):
        launch.start_checkpoint(config, overrides)


def test_run_identity_is_the_name_and_an_optional_date() -> None:
    identity = launch.run_identity
    named = {"run": {"name": "cat-vs-dog"}}
    assert identity(named, "configs/classifier.yaml", "", "") == ("cat-vs-dog", "")
    assert identity(named, "c.yaml", "mine", RUN_DATE) == ("mine", RUN_DATE)
    assert identity({}, "configs/dit.yaml", "", "") == ("dit", "")
    with pytest.raises(LaunchError, match="must be letters"):
        identity({}, "c.yaml", "../up", "")
    with pytest.raises(LaunchError, match="must be YYYY-MM-DD"):
        identity({}, "c.yaml", "ok", "02/01/2026")


class StandInVolume:
    """A volume holding ``files`` (path -> bytes), read the way `modal volume get` reads one."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    async def iterdir(self, path: str, recursive: bool = True):
        from modal.types import FileEntry, FileEntryType

        prefix = path.rstrip("/") + "/"
        if path in self.files:  # a file named directly
            yield FileEntry(path=path, type=FileEntryType.FILE, mtime=0, size=len(self.files[path]))
            return
        folders = sorted({str(Path(name).parent) for name in self.files if name.startswith(prefix)})
        for folder in folders:
            if folder.startswith(prefix):
                yield FileEntry(path=folder, type=FileEntryType.DIRECTORY, mtime=0, size=0)
        for name, data in sorted(self.files.items()):
            if name.startswith(prefix):
                yield FileEntry(path=name, type=FileEntryType.FILE, mtime=0, size=len(data))

    async def read_file(self, path: str):
        yield self.files[path]


def run_fetch_command(command: str, volume: StandInVolume, cwd: Path) -> None:
    """Run a printed `mkdir -p ... && modal volume get ...` chain, the `get` through Modal's code."""
    import asyncio
    import shlex

    from modal.cli._download import _volume_download

    for step in command.split(" && "):
        words = shlex.split(step)
        if words[:2] == ["mkdir", "-p"]:
            (cwd / words[2]).mkdir(parents=True, exist_ok=True)
            continue
        assert words[:3] == ["modal", "volume", "get"] and len(words) == 6, step
        asyncio.run(
            _volume_download(
                volume,
                words[4],
                cwd / words[5],
                overwrite=False,
                progress_cb=lambda *args, **kwargs: None,
            )
        )


RUN_FILES = {
    "checkpoints/dit/2026-01-02/cats/" + name: name.encode()
    for name in (
        "last.ckpt",
        "step=00001000.ckpt",
        "summary.json",
        "metrics.csv",
        "config.yaml",
        "samples/step=00001000.png",
    )
}


def test_the_printed_fetch_commands_download_the_run_into_its_folder(tmp_path) -> None:
    volume = StandInVolume({**RUN_FILES, "checkpoints/dit/2026-01-02/other/last.ckpt": b"no"})
    names = [
        "config.yaml",
        "last.ckpt",
        "metrics.csv",
        "samples",
        "step=00001000.ckpt",
        "summary.json",
    ]
    whole, essentials = launch.fetch_commands(
        "tinycats-outputs", "checkpoints/dit/2026-01-02/cats", 3 << 30, names
    )
    run_fetch_command(whole, volume, tmp_path / "a")
    fetched = {
        str(p.relative_to(tmp_path / "a")): p.read_bytes()
        for p in (tmp_path / "a").rglob("*")
        if p.is_file()
    }
    assert fetched == {"outputs/" + name: data for name, data in RUN_FILES.items()}

    run_fetch_command(essentials, volume, tmp_path / "b")
    fetched = {
        str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*") if p.is_file()
    }
    run = "outputs/checkpoints/dit/2026-01-02/cats/"
    assert fetched == {
        run + name
        for name in ("last.ckpt", "summary.json", "metrics.csv", "samples/step=00001000.png")
    }


def test_the_documented_fetch_commands_work_on_a_fresh_machine(tmp_path) -> None:
    import shlex

    page = (REPO / "docs" / "modal.md").read_text()
    commands = [
        line.strip()
        for line in page.splitlines()
        if line.strip().startswith("mkdir -p") and "modal volume get" in line
    ]
    assert commands, "docs/modal.md shows no fetch command"
    for i, command in enumerate(commands):
        first_get = next(shlex.split(step) for step in command.split(" && ") if "get" in step)
        run = Path(first_get[4])
        run = run.parent if run.name == "last.ckpt" else run
        files = {
            f"{run}/{name}": name.encode()
            for name in ("last.ckpt", "summary.json", "metrics.csv", "samples/s.png")
        }
        run_fetch_command(command, StandInVolume(files), tmp_path / str(i))
        fetched = {
            p.relative_to(tmp_path / str(i)) for p in (tmp_path / str(i)).rglob("*") if p.is_file()
        }
        assert fetched >= {Path("outputs", run, "last.ckpt"), Path("outputs", run, "summary.json")}


def test_the_end_margin_is_a_minute_or_a_tenth_of_a_short_limit() -> None:
    assert launch.attempt_end_s(24 * 3600) == 24 * 3600 - 60
    assert launch.attempt_end_s(6 * 3600) == 6 * 3600 - 60
    assert launch.attempt_end_s(100) == 90
