"""Which arithmetic a device trains and predicts in, by what it really supports (the config key `precision`, "auto"
unless a space or --precision names one):

- bf16 autocast on GPUs with native bfloat16 (compute capability 8.0 and later: A100, H100, L4, RTX 30xx/40xx); it
  keeps fp32's range, so no loss scaling;
- fp16 autocast with a gradient scaler on older GPUs (V100, T4, RTX 20xx): their bfloat16 is only emulated (no
  speed-up over fp32), while fp16 runs on their tensor cores; its narrow range needs the loss scaled so small
  gradients survive;
- fp32 on the CPU, where autocast rarely pays.

An explicit "bf16" or "fp16" is honoured on any device (both autocast on the CPU too), except bf16 on a GPU that
would only emulate it. The same rule serves training, validation, the final stage's scoring, cxr.predict and
Grad-CAM; ONNX export is always fp32.
"""

from __future__ import annotations

import contextlib

import torch

from cxr.errors import InputError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(setting: str, device: torch.device) -> str:
    """The precision ("bf16", "fp16" or "fp32") that the config key's value `setting` means on device."""
    on_gpu = device.type == "cuda"
    # including_emulation=False: a pre-Ampere GPU "supports" bfloat16 only by emulating it
    native_bf16 = on_gpu and torch.cuda.is_bf16_supported(including_emulation=False)
    if setting == "auto":
        return ("bf16" if native_bf16 else "fp16") if on_gpu else "fp32"
    if setting == "bf16" and on_gpu and not native_bf16:
        major, minor = torch.cuda.get_device_capability(device)
        raise InputError(f"precision 'bf16' on a GPU of compute capability {major}.{minor}, which only emulates "
                         "bfloat16 (native from 8.0): set the config key precision to auto or fp16")
    return setting


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to precision's dtype on device; fp32 runs as written."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def create_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16; for bf16 and fp32 a disabled scaler, which passes the loss and the step through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
