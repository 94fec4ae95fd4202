"""engine.runtime.cores.CoreShare: fewer kernel threads while other processes take cores, all of them again when
the run queue says a core is free and the extra thread then gets its core."""
from engine.runtime import cores
from engine.runtime.cores import CoreShare


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def share(others: list) -> tuple[CoreShare, Clock]:
    clock = Clock()
    return CoreShare(cores=2, clock=clock, others_running=lambda: others[0]), clock


def forwards(s: CoreShare, use: float, n: int = cores.WINDOW, wanted: int = 2) -> int:
    """n forwards each using `use` CPU seconds per wall second per thread; the thread count of the last."""
    for _ in range(n):
        threads = s.threads(wanted)
        s.observe(threads, 0.02, 0.02 * threads * use)
    return threads


def test_a_process_that_gets_its_cores_keeps_them():
    s, _ = share([0])
    assert forwards(s, 0.95, 20) == 2 and s.threads(2) == 2


def test_contention_drops_a_thread_and_a_free_core_brings_it_back():
    others = [1]
    s, clock = share(others)
    forwards(s, 0.5)
    assert s.threads(2) == 1  # dropped after WINDOW contended forwards
    clock.now += 100
    assert s.threads(2) == 1  # the neighbour still runs: no trial
    others[0] = 0
    assert s.threads(2) == 1  # ... and the pause since the last check has not passed
    clock.now += cores.FIRST_PAUSE_S
    assert s.threads(2) == 2  # a core is free: one more thread tried
    forwards(s, 0.97)
    assert s.threads(2) == 2  # and kept


def test_a_failed_trial_waits_longer_before_the_next():
    s, clock = share([0])
    forwards(s, 0.5)
    for pause in (2, 4, 8):  # each failed trial doubles the pause
        clock.now += pause / 2
        assert s.threads(2) == 2
        forwards(s, 0.5)
        assert s.threads(2) == 1
        clock.now += pause - 0.01
        assert s.threads(2) == 1
        clock.now -= pause / 2 - 0.01


def test_one_slow_forward_is_not_contention():
    s, _ = share([0])
    s.observe(2, 0.02, 0.01)  # e.g. page faults on the first touch of the weights
    assert forwards(s, 0.95) == 2


def test_short_forwards_and_single_threads_are_not_judged():
    s, _ = share([1])
    for _ in range(10):
        s.observe(2, cores.MIN_WALL_S / 2, 0.0)
        s.observe(1, 0.02, 0.001)
    assert s.threads(2) == 2


def test_a_device_never_gets_more_than_it_wants():
    s, _ = share([0])
    assert s.threads(1) == 1 and s.threads(5) == 2
