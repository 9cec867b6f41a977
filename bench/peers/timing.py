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


def offline_torch(threads=2, seed=0):
    """torch, set up as every peer script runs it: offline, `threads` threads, seeded."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return torch
