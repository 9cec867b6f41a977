"""What the peers' scripts share: timing a call the same way for every contestant."""
import statistics
import time


def median_ms(fn, runs, warmup):
    """The median wall time of `runs` calls of `fn`, in milliseconds, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)
