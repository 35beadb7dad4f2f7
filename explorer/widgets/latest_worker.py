"""Latest-wins background work: a newer request replaces an older queued one.

Use it for work over ~30 ms that the user can re-trigger faster than it finishes
(a manifold refresh while dragging a spin box, decoding for every new checkpoint).
There is ONE worker thread and at most ONE queued request: submitting while a request
is running replaces whatever was waiting, so the work never queues up behind itself.
A result is delivered only when its request is still the newest one submitted (and
not cancelled); a superseded result is dropped, so a slow old answer can never
overwrite a newer one on screen.

Signals arrive on the GUI thread (the worker object lives there; emission from the
worker thread is queued):

- resultReady(int request_id, object result)
- failed(int request_id, str message)   — one line; the log keeps the traceback
- busyChanged(bool)                      — True while something is running or queued

    worker = LatestWorker(self)
    worker.resultReady.connect(self._show)
    rid = worker.submit(training.latent.encode.manifold, model, n=15, dims=(0, 1))

Work functions must not touch widgets; they run on the worker thread.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import weakref
from typing import Any, Callable

from explorer.qt import QObject, QThread, QtCore, Signal

log = logging.getLogger(__name__)


_UNFINISHED: set = set()  # threads still running after a timed-out stop: kept alive, never destroyed running


def _stop_orphaned(attrs: dict, timeout_ms: int = 5000) -> None:
    """Stop a LatestWorker's thread given the worker's attribute dict (its Python side,
    which outlives the C++ object); the running call finishes first, its result dropped."""
    cond = attrs["_cond"]
    with cond:
        attrs["_stopping"] = True
        attrs["_pending"] = None
        attrs["_latest_id"] += 1
        cond.notify_all()
    thread = attrs.get("_thread")
    if thread is not None:
        if not thread.wait(timeout_ms):
            log.warning("%s: background call still running after %d ms", attrs.get("name"), timeout_ms)
            _UNFINISHED.add(thread)
        attrs["_thread"] = None
    for t in [t for t in _UNFINISHED if t.isFinished()]:
        _UNFINISHED.discard(t)


_LIVE: "weakref.WeakSet[LatestWorker]" = weakref.WeakSet()  # stopped at exit if still running


def wait_unfinished(timeout_ms: int = 30_000) -> bool:
    """At Python exit: stop the workers nobody shut down (a script that never ran the
    event loop, so aboutToQuit never came), then wait for threads whose stop timed out;
    whether all ended."""
    import time

    for worker in list(_LIVE):
        try:
            _stop_orphaned(worker.__dict__, 2000)
        except Exception:  # half torn down: nothing left to stop
            pass
    deadline = time.monotonic() + timeout_ms / 1000
    for t in list(_UNFINISHED):
        t.wait(max(0, int((deadline - time.monotonic()) * 1000)))
        if t.isFinished():
            _UNFINISHED.discard(t)
    return not _UNFINISHED


atexit.register(wait_unfinished)


class _Thread(QThread):
    def __init__(self, owner: "LatestWorker") -> None:
        super().__init__()
        self._owner = owner

    def run(self) -> None:
        self._owner._loop()


class LatestWorker(QObject):
    """One background thread running the newest submitted call; stale results are dropped."""

    resultReady = Signal(int, object)
    failed = Signal(int, str)
    busyChanged = Signal(bool)
    _ran = Signal()  # worker thread → GUI thread: re-check busy

    def __init__(self, parent: QObject | None = None, name: str = "latest-worker") -> None:
        super().__init__(parent)
        self.name = name
        self._cond = threading.Condition()
        self._pending: tuple[int, Callable, tuple, dict] | None = None
        self._running_id: int | None = None
        self._latest_id = 0  # the id a result must carry to be delivered
        self._stopping = False
        self._busy = False
        self._thread: _Thread | None = None
        self.completed = 0  # calls that ran to the end (delivered or dropped)
        self.dropped = 0  # results dropped as superseded
        self._ran.connect(self._update_busy)
        app = QtCore.QCoreApplication.instance()
        if app is not None:  # never leave a running QThread behind at exit
            app.aboutToQuit.connect(self.shutdown)
        # Destroyed with its parent and no shutdown() (a closed tab, a test's widget): the
        # thread must still stop, or Qt aborts with "QThread: Destroyed while thread is
        # still running". A plain function, not a method: the C++ object is going away.
        self.destroyed.connect(functools.partial(_stop_orphaned, self.__dict__))
        _LIVE.add(self)

    # -- GUI thread ------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> int:
        """Queue `fn(*args, **kwargs)`, replacing any request not yet started; its id."""
        with self._cond:
            if self._stopping:
                return -1
            self._latest_id += 1
            rid = self._latest_id
            self._pending = (rid, fn, args, kwargs)
            self._cond.notify()
        if self._thread is None:
            self._thread = _Thread(self)
            self._thread.setObjectName(self.name)
            self._thread.start()
        self._set_busy(True)
        return rid

    def cancel(self) -> None:
        """Drop the queued request and the result of the running one."""
        with self._cond:
            self._pending = None
            self._latest_id += 1
        self._update_busy()

    def is_current(self, request_id: int) -> bool:
        """Whether `request_id` is still the newest request (its result would be shown)."""
        return request_id == self._latest_id

    @property
    def latest_id(self) -> int:
        return self._latest_id

    def is_busy(self) -> bool:
        with self._cond:
            return self._pending is not None or self._running_id is not None

    def wait_idle(self, timeout_ms: int = 10000) -> bool:
        """Block (GUI thread, tests and benchmarks) until nothing runs or waits; the results
        are then queued for the event loop (process events to receive them)."""
        import time

        deadline = time.monotonic() + timeout_ms / 1000
        with self._cond:
            while self._pending is not None or self._running_id is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def shutdown(self, timeout_ms: int = 5000) -> None:
        """Stop the thread (the running call finishes first; its result is dropped)."""
        _stop_orphaned(self.__dict__, timeout_ms)

    # -- worker thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                rid, fn, args, kwargs = self._pending
                self._pending = None
                self._running_id = rid
            ok, value = True, None
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:  # reported as one line; the app carries on
                log.exception("background request %d failed", rid)
                from explorer.workers import readable_error

                ok, value = False, readable_error(exc)
            with self._cond:
                # Emitting under the lock (queued to the GUI thread, never blocks): once
                # shutdown has set _stopping, nothing more is emitted on a dying object.
                self._running_id = None
                self.completed += 1
                current = rid == self._latest_id and not self._stopping
                if not current:
                    self.dropped += 1
                self._cond.notify_all()
                if current:
                    if ok:
                        self.resultReady.emit(rid, value)
                    else:
                        self.failed.emit(rid, value)
                if not self._stopping:
                    self._ran.emit()

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busyChanged.emit(busy)

    def _update_busy(self) -> None:
        self._set_busy(self.is_busy())
