"""Silence the native (C++) log lines of MediaPipe / TFLite unless the user asked for them.

MediaPipe's graphs log through absl and TFLite straight to file descriptor 2 ("W0000 ...
inference_feedback_manager.cc:114] Feedback manager requires ...", "INFO: Created TensorFlow Lite XNNPACK
delegate"), from their own threads, where neither Python's ``logging`` nor ``GLOG_minloglevel`` reach them. They
say nothing a user can act on and scatter between the progress bars, so every MediaPipe call runs inside
:func:`native_logs_quiet`, which points fd 2 at ``/dev/null`` for the duration of the call. The calls are
synchronous (``process()`` returns once the graph has produced its output), so what the graph logs falls inside
the window. ``perchead --verbose`` (or ``PERCHEAD_VERBOSE=1``) keeps them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

VERBOSE_ENV = "PERCHEAD_VERBOSE"

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def native_logs_quiet() -> Iterator[None]:
    """Point fd 2 at /dev/null while the block runs (nested and multi-threaded use restore it exactly once)."""
    global _depth, _saved_fd
    if verbose():
        yield
        return
    with _lock:
        if _depth == 0:
            # Python's own buffered stderr goes out first, so nothing written before the block is lost.
            for stream in (sys.stderr, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            _saved_fd = os.dup(2)
            os.dup2(devnull, 2)
            os.close(devnull)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = None


__all__ = ["VERBOSE_ENV", "native_logs_quiet", "verbose"]
