"""The Modal image's exact pins agree with the package's dependency ranges."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
NOT_IN_THE_IMAGE = {"modal"}  # the container gets the client from Modal itself (plans/0013)


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def modal_pins() -> dict[str, Requirement]:
    lines = (REPO / "requirements-modal.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(pin.name): pin for pin in pins}


def test_every_modal_pin_is_exact() -> None:
    for name, pin in modal_pins().items():
        assert len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==", name


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    pins = modal_pins()
    needed = [
        Requirement(r)
        for r in project()["dependencies"]
        + project()["optional-dependencies"]["fid"]
        + project()["optional-dependencies"]["serve"]
    ]
    for requirement in needed:
        name = canonicalize_name(requirement.name)
        if name in NOT_IN_THE_IMAGE:
            continue
        assert name in pins, f"{name} is missing from requirements-modal.txt"
        version = next(iter(pins[name].specifier)).version
        assert requirement.specifier.contains(version), (
            f"{name}=={version} is outside {requirement.specifier}"
        )
        assert requirement.extras <= pins[name].extras, (
            f"{name} loses the extras {requirement.extras}"
        )


def test_modal_is_left_to_modal() -> None:
    # Modal mounts the launching client into every container; a pin would be a second copy.
    assert not NOT_IN_THE_IMAGE & modal_pins().keys()


def test_the_command_is_installed_both_ways() -> None:
    assert project()["scripts"]["tinycats"] == "tinycats.program:main"
    assert (REPO / "src/tinycats/__main__.py").read_text().count("main()") == 1
