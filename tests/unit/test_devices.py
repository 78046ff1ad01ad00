"""attnkit._util.devices: the one place devices and dtypes are decided, and the commands'
``--device``/``--dtype`` that go through it.

The machine's CUDA and MPS are replaced by stand-ins (monkeypatched ``is_available`` and
``device_count``) so that every branch runs on a CPU-only machine; nothing is allocated on a
device that is not there.
"""

import pytest
import torch

from attnkit._util import devices
from attnkit._util.devices import available_devices, resolve_device, resolve_dtype
from attnkit.training import distributed, precision


@pytest.fixture()
def machine(monkeypatch):
    """``machine(cuda=N, mps=bool)``: what torch reports as present."""

    def set_up(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(devices, "_mps_available", lambda: mps)

    return set_up


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    machine(cuda=0, mps=False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    machine(cuda=0, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    machine(cuda=2, mps=True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("AUTO") == torch.device("cuda")


def test_named_devices(machine):
    machine(cuda=2, mps=True)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert resolve_device("mps") == torch.device("mps")
    assert available_devices() == ["cpu", "cuda:0", "cuda:1", "mps"]


def test_cuda_without_cuda_names_it_and_what_is_here(machine):
    machine(cuda=0, mps=False)
    with pytest.raises(ValueError) as e:
        resolve_device("cuda", "--device")
    assert str(e.value) == (
        "--device 'cuda' needs CUDA, which is not available here; available: cpu (or 'auto')"
    )
    with pytest.raises(ValueError, match=r"--device 'cuda:0' needs CUDA.*available: cpu"):
        resolve_device("cuda:0", "--device")
    with pytest.raises(ValueError, match="'mps' needs Apple's MPS.*available: cpu"):
        resolve_device("mps")


def test_cuda_index_past_the_count(machine):
    machine(cuda=1)
    with pytest.raises(ValueError) as e:
        resolve_device("cuda:3", "train.device")
    assert str(e.value) == (
        "train.device 'cuda:3': there is no CUDA device 3; available: cpu, cuda:0"
    )


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cpu:0", "gpu", "", "cuda:"])
def test_names_that_are_no_device(machine, bad):
    machine(cuda=0)
    with pytest.raises(ValueError) as e:
        resolve_device(bad, "--device")
    assert str(e.value) == (
        f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {bad!r}"
    )


def test_a_device_of_the_wrong_type():
    with pytest.raises(TypeError, match="device must be a device name.*got 3"):
        resolve_device(3)  # type: ignore[arg-type]


def test_dtypes():
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    assert resolve_dtype(torch.bfloat16, cpu) is torch.bfloat16
    assert resolve_dtype("float16", cuda) is torch.float16
    assert resolve_dtype("float16", mps) is torch.float16
    with pytest.raises(ValueError) as e:
        resolve_dtype("float16", cpu, "--dtype")
    assert str(e.value) == (
        "--dtype 'float16' needs CUDA or MPS, and the device is 'cpu'; "
        "expected 'bfloat16' or 'float32' on cpu"
    )
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16', "):
        resolve_dtype("float64", cpu)
    with pytest.raises(ValueError, match="dtype must be one of .* got torch.int8"):
        resolve_dtype(torch.int8, cpu)


def test_training_decides_through_the_resolver(machine):
    """train.device and train.dtype: distributed.init and precision.check_dtype give the
    resolver's answers and its messages, with the setting's name."""
    machine(cuda=0)
    assert distributed.init("auto").device == torch.device("cpu")
    assert distributed.init("cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="^train.device 'cuda' needs CUDA"):
        distributed.init("cuda")
    with pytest.raises(ValueError, match="^train.dtype 'float16' needs CUDA or MPS"):
        precision.check_dtype("float16", torch.device("cpu"))
    assert precision.check_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    assert precision.DTYPES is devices.DTYPES


def test_bench_harness_decides_through_the_resolver(machine):
    from attnkit.bench.harness import resolve_device as bench_device

    machine(cuda=0)
    assert bench_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="^device 'cuda' needs CUDA"):
        bench_device("cuda")
