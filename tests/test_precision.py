"""cxr.precision: which arithmetic each device gets. This suite runs without a GPU, so the CUDA capability queries are
patched; autocast itself runs for real on the CPU."""

from __future__ import annotations

import pytest
import torch

from cxr.errors import InputError
from cxr.precision import autocast, create_scaler, resolve_precision

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def _gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    """A GPU of this compute capability as torch.cuda reports it; like torch, is_bf16_supported() says yes to any
    GPU that can emulate bfloat16 unless asked for native support only."""
    native = capability >= (8, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16")])
def test_auto_is_bf16_on_gpus_with_native_bfloat16_and_fp16_on_older_ones(monkeypatch, capability, expected):
    _gpu(monkeypatch, capability)
    assert resolve_precision("auto", GPU) == expected


def test_auto_is_fp32_on_the_cpu():
    assert resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize("setting", ["bf16", "fp16", "fp32"])
def test_a_named_precision_is_kept_where_the_device_has_it(monkeypatch, setting):
    assert resolve_precision(setting, CPU) == setting  # CPU autocast has both half types
    _gpu(monkeypatch, (8, 6))
    assert resolve_precision(setting, GPU) == setting


def test_bf16_on_a_gpu_that_only_emulates_it_is_refused_naming_the_fix(monkeypatch):
    _gpu(monkeypatch, (7, 5))
    assert resolve_precision("fp16", GPU) == "fp16"
    with pytest.raises(InputError, match=r"compute capability 7\.5.*precision to auto or fp16"):
        resolve_precision("bf16", GPU)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_autocast_computes_in_the_precision_on_the_cpu(precision, dtype):
    layer, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    with autocast(precision, CPU):
        assert layer(x).dtype == dtype


def test_only_fp16_scales_the_loss():
    assert create_scaler("fp16", CPU).is_enabled()
    assert not create_scaler("bf16", CPU).is_enabled() and not create_scaler("fp32", CPU).is_enabled()
