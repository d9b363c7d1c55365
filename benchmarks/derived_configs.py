"""The configs the kill harness and the resume tests train: the shipped ones, shrunk.

Each file in configs/ has a derived config that changes only its sizes (``SIZES``: image size,
network width and depth, batch, step and epoch counts and the cadences counted in them) and what
this offline machine forces (``OFFLINE``). Everything else stays as shipped: the limit kind,
the validation cadence's kind, the checkpoint policy, the best monitor, EMA and sample grids,
the precision rule (unset: the machine's choice), accumulation. ``EXTRAS`` add the cases no
shipped config has; each names what it adds beyond a shrunk shipped config.

    python -m benchmarks.derived_configs OUT    # writes every derived config to OUT/<name>.yaml
"""

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "configs"

# What this machine forces where a config has the key: no internet (the shipped photos, no
# pretrained weights).
OFFLINE = {"data.source": "data/sample/images", "model.init_args.weights": None}

SIZES = frozenset(
    {
        "data.image_size",
        "data.batch_size",
        "model.init_args.width",
        "model.init_args.depth",
        "model.init_args.heads",
        "model.init_args.samples_per_class",
        "model.init_args.sample_steps",
        "model.init_args.sample_every_n_steps",
        "model.init_args.ema_start_step",
        "trainer.max_steps",
        "trainer.max_epochs",
        "trainer.val_check_interval",
        "trainer.check_val_every_n_epoch",
        "trainer.log_every_n_steps",
        "checkpoint.every_n_train_steps",
    }
)

_TINY_DIT = {"model.init_args.width": 64, "model.init_args.depth": 2, "model.init_args.heads": 2}
_DIT_STEPS = {  # 100k steps → 24; validation and checkpoints together, as shipped
    "trainer.max_steps": 24,
    "trainer.val_check_interval": 4,
    "checkpoint.every_n_train_steps": 4,
    "model.init_args.ema_start_step": 8,
    "model.init_args.sample_every_n_steps": 12,
    "model.init_args.samples_per_class": 1,
    "model.init_args.sample_steps": 2,
    "trainer.log_every_n_steps": 2,
}

SHRUNK: dict[str, dict[str, Any]] = {
    # 236 train photos at 24 px in 7 batches of 32 and one of 12: 3 epochs of 8 steps, a
    # checkpoint every 5 steps (mid-epoch), validation at each epoch's end.
    "classifier": {
        "data.image_size": 24,
        "data.batch_size": 32,
        "trainer.max_epochs": 3,
        "trainer.log_every_n_steps": 2,
        "checkpoint.every_n_train_steps": 5,
    },
    # The 12 breeds' 96 cats: 72 train photos in 4 batches of 16 and one of 8.
    "classifier_breeds": {
        "data.image_size": 24,
        "data.batch_size": 16,
        "trainer.max_epochs": 4,
        "trainer.log_every_n_steps": 2,
        "checkpoint.every_n_train_steps": 3,
    },
    # The README's main job at 24 px over 3 of its 30 epochs (13 steps each, the last batch
    # partial); a checkpoint each epoch's end, as its every 65 steps is each 5th epoch's.
    "classifier_sample": {
        "data.image_size": 24,
        "trainer.max_epochs": 3,
        "checkpoint.every_n_train_steps": 13,
    },
    "dit": {"data.image_size": 16, "data.batch_size": 16, **_TINY_DIT, **_DIT_STEPS},
    "dit_128": {"data.image_size": 32, "data.batch_size": 16, **_TINY_DIT, **_DIT_STEPS},
    # 72 train cats in 3 batches of 24; validation every 3 epochs (shipped: 25).
    "dit_sample": {
        "data.image_size": 16,
        **_TINY_DIT,
        "trainer.max_steps": 30,
        "trainer.check_val_every_n_epoch": 3,
        "checkpoint.every_n_train_steps": 10,
        "model.init_args.ema_start_step": 5,
        "model.init_args.sample_every_n_steps": 15,
        "model.init_args.samples_per_class": 1,
        "model.init_args.sample_steps": 2,
    },
}

# name: (the shrunk config it starts from, what it adds).
EXTRAS: dict[str, tuple[str, dict[str, Any]]] = {
    # 236 photos in 14 batches of 16 and one of 12: step 15, a checkpoint, is the partial one.
    "classifier_partial_batch": (
        "classifier",
        {"data.batch_size": 16, "trainer.max_epochs": 2, "checkpoint.every_n_train_steps": 3},
    ),
    "classifier_val_fraction": ("classifier", {"trainer.val_check_interval": 0.5}),
    "classifier_accumulate_bf16": (
        "classifier",
        {"trainer.accumulate_grad_batches": 2, "trainer.precision": "bf16-mixed"},
    ),
    "classifier_37_test_split": (
        "classifier",
        {"data.labels": "pet_breeds", "data.split": [0.7, 0.15, 0.15]},
    ),
    "classifier_ddp": (
        "classifier",
        {"trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp"},
    ),
}


def names() -> list[str]:
    """Every derived config: one per shipped config, then the extras."""
    return [*SHRUNK, *EXTRAS]


def shipped(name: str) -> dict[str, Any]:
    """A shipped config (configs/<name>.yaml) as a dict."""
    return yaml.safe_load((SHIPPED / f"{name}.yaml").read_text())


def derived(name: str) -> dict[str, Any]:
    """The config ``name`` as the harness and the tests train it."""
    base, extra = EXTRAS.get(name, (name, {}))
    config = shipped(base)
    offline = {key: value for key, value in OFFLINE.items() if value_at(config, key) is not None}
    for key, value in {**offline, **SHRUNK[base], **extra}.items():
        _set(config, key, value)
    return config


def changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys whose values differ between two configs."""
    keys = set(before) | set(after) if isinstance(before, dict) and isinstance(after, dict) else ()
    if not keys:
        return set() if before == after else {prefix.rstrip(".")}
    return {
        changed
        for key in keys
        for changed in changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")
    }


def write(name: str, folder: Path) -> Path:
    """Write the derived config ``name`` to ``folder/<name>.yaml``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(derived(name), sort_keys=False))
    return path


def value_at(config: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a config (None if absent)."""
    for key in dotted.split("."):
        config = config.get(key) if isinstance(config, dict) else None
    return config


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    for parent in parents:
        config = config.setdefault(parent, {})
    config[key] = value


if __name__ == "__main__":
    for config_name in names():
        print(write(config_name, Path(sys.argv[1])))
