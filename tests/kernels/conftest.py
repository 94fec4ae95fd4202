"""Fixtures shared by the kernel tests."""
import numba
import pytest

from cuda_standin import device  # noqa: F401  (the stand-in GPU of tests/cuda_standin.py)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run the test with the compiled kernels on 1, then 2 threads."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield
    numba.set_num_threads(before)
