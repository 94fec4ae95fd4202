"""kernels.device: the Device a model computes on, built from arguments or the environment, checked once."""
import pytest

from engine.errors import DeviceError, InvalidRequestError
from kernels import cpu, cuda
from kernels import device
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


@pytest.mark.parametrize("files, cores, expected", [
    ({}, 4, 4),                                                     # no cgroup files: the affinity
    ({"cpu.max": "max 100000\n"}, 4, 4),                            # v2, no quota
    ({"cpu.max": "150000 100000\n"}, 4, 1),                         # v2, 1.5 CPUs: rounded down
    ({"cpu.max": "300000 100000\n"}, 2, 2),                         # a quota above the affinity
    ({"cpu.max": "50000 100000\n"}, 4, 1),                          # below one CPU: still one thread
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8, 2),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8, 8),      # v1, no quota
    ({"cpu.max": "garbage"}, 3, 3),                                 # unreadable: ignored
])
def test_usable_cores_follows_affinity_and_cgroup_quota(tmp_path, monkeypatch, files, cores, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert device.usable_cores(tmp_path) == expected


def test_default_threads_are_the_usable_cores(monkeypatch):
    monkeypatch.delenv("ENGINE_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cores", lambda: 1)
    assert select_device("cpu").threads == 1
    assert select_device("cpu", threads=8).threads == 1  # capped
