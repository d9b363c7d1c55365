"""The fast paths, exercised on the CPU: each gives the plain path's loss on a fixed batch, and
bf16 is chosen exactly where the processor computes it natively."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from tinycats.data import PetsDataModule
from tinycats.models import CatClassifier, DiTGenerator, performance
from tinycats.models.performance import CompiledOrEager, auto_precision, choose_precision

from helpers.dit import TINY_DIT


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 32, 32, generator=generator), torch.randint(
        0, 2, (8,), generator=generator
    )


def classifier(**options) -> CatClassifier:
    torch.manual_seed(0)
    model = CatClassifier(num_classes=2, **options)
    model.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    model.configure_model()
    return model.eval()


def loss_of(model: CatClassifier, batch) -> torch.Tensor:
    images, targets = batch
    return F.cross_entropy(model(images), targets)


def test_bf16_autocast_gives_the_float32_loss_within_tolerance(batch) -> None:
    model = classifier()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_of(model, batch)
    assert torch.allclose(low.float(), loss_of(model, batch), rtol=0.03)


def test_precision_is_bf16_on_gpus_that_have_it_unless_set(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: True)
    assert auto_precision(None) == "bf16-mixed"
    assert auto_precision("32-true") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: False)
    assert auto_precision(None) is None


# What the precision rule should find on each kind of tests/conftest.py's ``cpu_kind``.
NATIVE_BF16 = {"avx2": (), "avx512_bf16": ("avx512_bf16",), "amx": ("amx_bf16", "avx512_bf16")}


@pytest.mark.parametrize(
    ("capabilities", "found"),
    [
        ({"avx512_bf16": True, "amx_bf16": True, "avx2": True}, ("amx_bf16", "avx512_bf16")),
        ({"avx512_bf16": True, "amx_bf16": False}, ("avx512_bf16",)),
        ({"amx_bf16": True}, ("amx_bf16",)),
        ({"avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, ()),  # emulated bf16 only
        ({"architecture": "arm64", "bf16": True}, ()),  # not measured there: float32
    ],
)
def test_cpu_bf16_means_avx512_bf16_or_amx(capabilities, found, monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert performance.cpu_bf16_features() == found
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision(None) == ("bf16-mixed" if found else None)
    assert auto_precision("32-true") == "32-true"  # an explicit precision always wins
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert performance.cpu_bf16_features() == ()  # torch told to run as an AVX2 machine
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert performance.cpu_bf16_features() == ()  # nothing to run bf16 kernels with


def test_each_cpu_kind_trains_each_model_in_its_precision(cpu_kind, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    native = NATIVE_BF16[cpu_kind]
    assert performance.cpu_bf16_features() == native
    bf16 = "bf16-mixed" if native else None
    small = DiTGenerator(num_classes=2, **TINY_DIT, image_size=16)
    big = DiTGenerator(num_classes=2, patch_size=4, width=384, depth=12, heads=6, image_size=64)
    assert not small.cpu_bf16 and big.cpu_bf16  # measured: 0.62x and 1.86x (ADR 0014)
    assert [auto_precision(None, model=m) for m in (None, classifier(), big, small)] == [
        bf16,
        bf16,
        bf16,
        None,
    ]
    reason = choose_precision(None, "cpu", small).reason
    assert ("DiTGenerator" if native else "no native bfloat16") in reason
    assert choose_precision("bf16-mixed", "cpu", small).precision == "bf16-mixed"  # set wins
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: True)
    assert choose_precision(None, "cuda", small).precision == "bf16-mixed"  # the rule is CPUs'


def test_bf16_asked_for_on_a_cpu_that_emulates_it_is_kept_with_a_warning(cpu_kind, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="tinycats"):
        for requested in ("bf16-mixed", "bf16-true", "32-true"):
            assert choose_precision(requested, "cpu").precision == requested
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == (2 if cpu_kind == "avx2" else 0)
    assert all("emulated" in w and "Leave trainer.precision unset" in w for w in warned)


def test_cpu_features_agree_with_proc_cpuinfo_and_aten() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(cpuinfo.read_text().split())
    aten_avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    expected = tuple(f for f in performance.CPU_BF16_FEATURES if f in flags and aten_avx512)
    assert performance.cpu_bf16_features() == expected


def test_aten_cpu_capability_forced_down_means_float32() -> None:
    code = "from tinycats.models.performance import cpu_bf16_features as f; print(f())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "()"


def test_channels_last_gives_the_same_loss(batch) -> None:
    plain, nhwc = classifier(channels_last=False), classifier(channels_last=True)
    assert nhwc.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(loss_of(nhwc, batch), loss_of(plain, batch), atol=1e-5)


def test_a_failing_compile_falls_back_to_eager_once(batch, monkeypatch, caplog) -> None:
    calls = []

    def broken_compile(module):
        def run(*args):
            calls.append(1)
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    compiled, plain = classifier(compile=True), classifier()
    assert isinstance(compiled._compiled, CompiledOrEager)
    with caplog.at_level(logging.WARNING, logger="tinycats"):
        first, second = loss_of(compiled, batch), loss_of(compiled, batch)
    assert torch.allclose(first, loss_of(plain, batch)) and torch.equal(first, second)
    assert len(calls) == 1 and "running eagerly" in caplog.text
    assert compiled.state_dict().keys() == plain.state_dict().keys()


def test_images_on_the_device_give_the_same_batches_as_worker_loading(
    tmp_path: Path, pets_sample: Path
) -> None:
    def first_batches(**options) -> tuple[list[torch.Tensor], PetsDataModule]:
        data = PetsDataModule(
            root=str(tmp_path), source=str(pets_sample), image_size=16, batch_size=32, **options
        )
        data.prepare_data()
        data.setup("fit")
        return [images for images, _ in data.train_dataloader()][:3], data

    on_device, data = first_batches(on_device=True)
    assert data.images_on_device and data.train_dataloader().num_workers == 0
    with_workers, data = first_batches(on_device=False, num_workers=1)
    assert not data.images_on_device and data.train_dataloader().num_workers == 1
    assert all(torch.equal(a, b) for a, b in zip(on_device, with_workers, strict=True))


def test_the_dit_falls_back_to_eager_with_the_same_loss(monkeypatch) -> None:
    from tinycats.networks.flow import flow_loss

    monkeypatch.setattr(
        torch, "compile", lambda module: lambda *args: (_ for _ in ()).throw(RuntimeError("no"))
    )
    torch.manual_seed(0)
    model = DiTGenerator(num_classes=3, **TINY_DIT, image_size=16, compile=True)
    model.configure_model()
    x0, labels = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0])
    noise, t = torch.randn_like(x0), torch.rand(4)
    via_fallback = flow_loss(model._compiled, x0, labels, noise=noise, t=t)
    assert torch.equal(via_fallback, flow_loss(model.model, x0, labels, noise=noise, t=t))
    assert model._compiled.compiled is None  # it gave up on compiling after the failure


def test_fused_adamw_is_the_optimizer_and_takes_the_plain_step(batch) -> None:
    fused, plain = classifier().train(), classifier().train()
    fused.trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False)
    optimizer = fused.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    reference = torch.optim.AdamW(
        plain.parameters(),
        **{k: optimizer.defaults[k] for k in ("lr", "weight_decay", "betas", "eps")},
        foreach=False,
    )
    for model, step in ((fused, optimizer), (plain, reference)):
        loss_of(model, batch).backward()
        step.step()
    for after_fused, after_plain in zip(fused.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(after_fused, after_plain, atol=1e-6)
    assert not torch.equal(fused.net.fc.weight, classifier().net.fc.weight)  # it did move
