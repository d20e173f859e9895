"""Run per-clip native work (decoding, and the CPU pair stages the runners fuse with it: OpenCV,
scikit-image, torch on CPU) in a child process, so a segfault, an abort or a hang takes down only
that clip.

:class:`IsolatedCall` keeps one long-lived child process (``spawn`` start method: no state is
inherited from a Ray worker or a threaded parent) and sends it one task at a time. The work
function is ``factory(*args)``, called as ``fn(task, report)``; ``report(step)`` tells the parent
which step is running, so a crash or hang names it. If the child dies while working on a task the
result is ``("crashed", detail, step)``; if it does not answer within the time limit it is killed
and the result is ``("timeout", detail, step)``. A fresh child is started for the next task.
Results travel back over a pipe (our own objects between our own processes). Tests inject faults
with a factory of their own.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any, Callable


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent dies (a worker killed, a
    build stopped with SIGTERM or SIGKILL), so no isolation child outlives its build."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's close() and daemon flag remain
        pass


def _child(conn, factory: Callable, factory_args: tuple, parent_pid: int = 0) -> None:
    _die_with_parent()
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    try:
        import cv2

        cv2.setNumThreads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or -1)
    except ImportError:
        pass
    fn = factory(*factory_args)

    def report(step: str) -> None:
        conn.send(("step", step))

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            conn.send(("ok", fn(task, report)))
        except Exception as e:  # an exception is an answer, not a crash
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _describe_exit(code) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class IsolatedCall:
    """``call(task)`` runs ``factory(*args)(task, report)`` in a child process with a time limit."""

    def __init__(self, factory: Callable, args: tuple = (), timeout_s: float = 300.0):
        self.factory, self.args, self.timeout_s = factory, args, timeout_s
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(target=_child, args=(child, self.factory, self.args, os.getpid()), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def call(self, task: Any) -> tuple[str, Any, str]:
        """``(status, result or detail, the last step reported)``; status: ok | error | crashed | timeout."""
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self.restarts += 1
                self._kill()
            self._start()
        step = ""
        deadline = time.monotonic() + self.timeout_s
        try:
            self._conn.send(task)
            while self._conn.poll(max(0.0, deadline - time.monotonic())):
                kind, payload = self._conn.recv()
                if kind == "step":
                    step = payload
                    continue
                return kind, payload, step
        except (EOFError, OSError, BrokenPipeError):
            self._proc.join(5)
            detail = _describe_exit(self._proc.exitcode)
            self._kill()
            return "crashed", f"worker process died ({detail})", step
        self._kill()
        return "timeout", f"no result within {self.timeout_s:g} s; worker process killed", step

    def close(self) -> None:
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(2)
            except (OSError, BrokenPipeError):
                pass
        self._kill()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
