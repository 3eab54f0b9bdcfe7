"""Peak resident memory of this process over a stretch of work, sampled by a background thread."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading

import psutil


def release_freed_memory() -> None:
    """Hand memory freed by earlier work back to the OS, so that one method's peak is not another's leftovers.

    glibc keeps freed heap pages mapped (they still count as resident) until `malloc_trim` is called; on
    other C libraries this only collects garbage.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class PeakRss:
    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.peak_bytes = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
        return False

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 2**30
