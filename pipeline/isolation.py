"""Run per-clip native work (decoding, and the CPU pair stages the runners fuse with it: OpenCV,
scikit-image, torch on CPU) in a child process, so a segfault, an abort or a hang takes down only
that clip.

:class:`IsolatedCall` keeps one long-lived child process (``spawn`` start method: no state is
inherited from a Ray worker or a threaded parent) and sends it one task at a time. The work
function is ``factory(*args)``, called as ``fn(task, report)``; ``report(step)`` tells the parent
which step is running, so a crash or hang names it, and ``report.emit(item)`` streams results to
the parent as they are ready. If the child dies while working on a task the result is
``("crashed", detail, step)``; if its next item or answer does not come within the time limit it
is killed and the result is ``("timeout", detail, step)``. A fresh child is started for the next task.
Results travel back over a pipe (our own objects between our own processes). Tests inject faults
with a factory of their own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any, Callable, Iterator


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent dies (a worker killed, a
    build stopped with SIGTERM or SIGKILL), so no isolation child outlives its build."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's close() and daemon flag remain
        pass


class _Reporter:
    """The work's line to the parent: ``report(step)`` names the running step, ``report.emit(x)``
    sends one result item now (so the parent can process it while the work goes on)."""

    def __init__(self, conn):
        self.conn = conn

    def __call__(self, step: str) -> None:
        self.conn.send(("step", step))

    def emit(self, item: Any) -> None:
        self.conn.send(("item", item))


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
    conn.send(("ready", None))  # imports and models are loaded: the parent's clock for tasks starts now
    report = _Reporter(conn)
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

    def __init__(self, factory: Callable, args: tuple = (), timeout_s: float = 300.0, startup_timeout_s: float = 600.0):
        self.factory, self.args, self.timeout_s = factory, args, timeout_s
        self.startup_timeout_s = startup_timeout_s  # a cold start (imports, models) on a busy node is not a hang
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self.restarts = 0

    def _start(self) -> None:
        """A fresh child, ready for tasks (its factory has run); raises ``OSError`` / ``TimeoutError``."""
        parent, child = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(target=_child, args=(child, self.factory, self.args, os.getpid()), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.startup_timeout_s):
            raise TimeoutError(f"worker process not ready within {self.startup_timeout_s:g} s")
        kind, _ = parent.recv()  # EOFError if the factory failed or crashed
        if kind != "ready":
            raise EOFError(f"unexpected first message {kind!r}")

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def call(self, task: Any) -> tuple[str, Any, str]:
        """``(status, result or detail, the last step reported)``; status: ok | error | crashed | timeout.
        Items the work emitted come first in an ``ok`` result."""
        items = []
        for kind, payload, step in self.stream(task):
            if kind == "item":
                items.append(payload)
                continue
            return kind, (items + list(payload) if kind == "ok" and items else payload), step
        raise AssertionError("stream() ended without a status")  # pragma: no cover

    def stream(self, task: Any) -> Iterator[tuple[str, Any, str]]:
        """Yields ``("item", x, step)`` for each item the work emits (``report.emit``), as it
        arrives, then one final ``(status, result or detail, step)`` as :meth:`call` returns it.
        The time limit applies to each wait for the child's next item (or its final answer): a long
        clip that keeps producing pairs never times out, a hung one does. The caller's own time
        between items and the child's start-up do not count. A stream abandoned before its end
        kills the child (a fresh one serves the next task)."""
        step = ""
        budget = self.timeout_s
        finished = False
        try:
            if self._proc is None or not self._proc.is_alive():
                if self._proc is not None:
                    self.restarts += 1
                    self._kill()
                self._start()
            self._conn.send(task)
            while True:
                t = time.monotonic()
                ready = self._conn.poll(max(0.0, budget))
                budget -= time.monotonic() - t
                if not ready:
                    break
                kind, payload = self._conn.recv()
                if kind == "step":
                    step = payload
                elif kind == "item":
                    budget = self.timeout_s  # progress: the limit is on the time to the next item
                    yield kind, payload, step
                else:
                    finished = True
                    yield kind, payload, step
                    return
        except TimeoutError as e:
            self._kill()
            finished = True
            yield "timeout", f"{e}; worker process killed", step
            return
        except (EOFError, OSError, BrokenPipeError):
            self._proc.join(5)
            detail = _describe_exit(self._proc.exitcode)
            self._kill()
            finished = True
            yield "crashed", f"worker process died ({detail})", step
            return
        finally:
            if not finished:  # timed out, or the caller stopped reading: the child may still be sending
                self._kill()
        finished = True
        yield "timeout", f"no result within {self.timeout_s:g} s; worker process killed", step

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
