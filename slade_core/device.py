"""Where and in what precision a stage computes: the torch device and the AMP choice.

Both come from RuntimeConfig and differ from plain fp32 on CUDA (on the CPU only with
runtime.amp_on_cpu: bf16 autocast, no memory-format change), so they live together:
`resolve_device` picks the device, `Precision` the autocast dtype, the memory format and the
loss scaling that go with it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from slade_core.config import RuntimeConfig

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """Map a runtime device name to a torch device ("auto": CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"runtime.device={name!r} but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    return device


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than fp32."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # a build without oneDNN's check
        return False


@dataclass(frozen=True)
class Precision:
    """AMP and memory-format choices: on CUDA both apply; a CPU run is fp32 unless
    runtime.amp_on_cpu asks for bf16 autocast. runtime.channels_last applies on CUDA, and on
    a CPU to the whole trunk, whose Lite0 training step runs 1.14x faster in it
    (benchmarks/README.md). A partial trunk on a CPU stays in the default layout: there the
    layout changes its floating-point results and buys nothing measured."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def for_runtime(
        cls, runtime: RuntimeConfig, device: torch.device, whole_trunk: bool = False
    ) -> Precision:
        if device.type != "cuda":
            bf16 = runtime.amp and runtime.amp_on_cpu and device.type == "cpu"
            if bf16 and not cpu_has_native_bf16():
                log.warning(
                    "runtime.amp_on_cpu: this CPU has no native bf16, so autocast is emulated "
                    "and likely slower than fp32; set runtime.amp_on_cpu=false"
                )
            channels_last = runtime.channels_last and whole_trunk
            return cls(device, torch.bfloat16 if bf16 else None, channels_last)
        dtype = None
        if runtime.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, dtype, runtime.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def place(self, net: nn.Module, images: bool) -> nn.Module:
        """Move `net` to the device (channels_last when it will see images or maps)."""
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if images and self.channels_last else net

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling is needed for fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
