"""kernels.device: the Device a model computes on, built from arguments or the environment, checked once."""
import pytest

from engine.errors import DeviceError, InvalidRequestError
from kernels import cpu, cuda
from kernels.device import Device, select_device


def test_select_device_reads_arguments_then_environment(monkeypatch):
    monkeypatch.setattr(cuda, "available", lambda: False)
    for name in ("ENGINE_DEVICE", "ENGINE_KERNELS", "ENGINE_ACTIVATIONS", "ENGINE_THREADS"):
        monkeypatch.delenv(name, raising=False)
    dev = select_device()
    assert (dev.kind, dev.activations) == ("cpu", "float32") and dev.kernels == ("numba" if cpu.available else "numpy")
    monkeypatch.setenv("ENGINE_ACTIVATIONS", "int8")
    monkeypatch.setenv("ENGINE_KERNELS", "numpy")
    monkeypatch.setenv("ENGINE_THREADS", "1")
    dev = select_device()
    assert (dev.activations, dev.kernels, dev.threads, dev.compiled, dev.int8) == ("int8", "numpy", 1, False, False)
    dev = select_device(activations="float32", kernels="numba", threads=10_000)
    assert dev.activations == "float32" and dev.threads >= 1 and dev.threads <= 10_000
    monkeypatch.setenv("ENGINE_THREADS", "many")
    with pytest.raises(InvalidRequestError, match="ENGINE_THREADS"):
        select_device()


def test_device_refuses_unknown_settings():
    with pytest.raises(InvalidRequestError, match="float32, int8"):
        Device(activations="int4")
    with pytest.raises(InvalidRequestError, match="numba, numpy"):
        Device(kernels="blas")
    with pytest.raises(InvalidRequestError, match="threads"):
        Device(threads=0)
    with pytest.raises(DeviceError, match="auto, cpu, cuda"):
        Device("tpu")


@pytest.mark.skipif(not cpu.available, reason="numba kernels unavailable")
def test_describe_names_the_path():
    assert "int8 activations" in Device(activations="int8").describe()
    assert "float32 activations, 2 threads" in Device(threads=2).describe()
    assert "NumPy reference" in Device(kernels="numpy").describe()


def test_device_selection(monkeypatch):
    """No GPU here (or none usable): auto is the CPU, cuda is a clear error, unknown names are refused."""
    monkeypatch.setattr(cuda, "available", lambda: False)
    monkeypatch.delenv("ENGINE_DEVICE", raising=False)
    assert select_device(None).kind == "cpu" and select_device(None).xp.__name__ == "numpy"
    assert select_device("auto").kind == "cpu"
    with pytest.raises(DeviceError, match="--device cpu"):
        select_device("cuda")
    monkeypatch.setenv("ENGINE_DEVICE", "cuda")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        select_device(None)
    with pytest.raises(DeviceError, match="auto, cpu, cuda"):
        select_device("tpu")
