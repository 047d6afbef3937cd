"""The daemon's small machinery: backoff and the timer thread."""

from __future__ import annotations

import threading
import time

from agent.timers import Backoff, Timers


def test_backoff_grows_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=1.0, cap=30.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert 0.5 <= delays[0] <= 1.0
    assert 2.0 <= delays[2] <= 4.0
    assert all(15.0 <= d <= 30.0 for d in delays[5:])
    backoff.attempt = 5000  # a server down for days must not overflow the arithmetic
    assert 15.0 <= backoff.next_delay() <= 30.0
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_timers_fire_in_order_and_cancel() -> None:
    timers = Timers()
    timers.start()
    fired: list[str] = []
    done = threading.Event()
    now = time.time()

    def last() -> None:
        fired.append("b")
        done.set()

    timers.call_at(now + 0.3, last)
    timers.call_at(now + 0.1, lambda: fired.append("a"))
    handle = timers.call_at(now + 0.2, lambda: fired.append("cancelled"))
    timers.cancel(handle)
    assert done.wait(5)
    timers.stop()
    assert fired == ["a", "b"]


def test_a_failing_timer_callback_does_not_stop_the_others() -> None:
    timers = Timers()
    timers.start()
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("bug in a callback")

    timers.call_at(time.time(), boom)
    timers.call_at(time.time() + 0.05, done.set)
    assert done.wait(5)
    timers.stop()
