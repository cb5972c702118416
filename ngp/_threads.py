"""Independent host-side jobs on two threads, so that one job's Python and NumPy work overlaps the compiled
kernels another job waits for (XLA:CPU runs one call on one core and releases the GIL while it runs).

Used for the four-point expectations of :class:`ngp._finite.FourPointTable`, whose chunks of new multisets are
independent (docs/four-point.md, "Two threads, fewer compiled shapes"), and a layer's four-point values computed
in the background while the layers below prepare theirs (:func:`in_background`). Results do not depend on the
threads: each job computes exactly what it computes alone, and the results come back in the order of the jobs.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import jax

from ._validate import job_context

__all__ = ["thread_map", "in_background", "THREADS"]

#: Threads for independent jobs: two (one job's host work beside another's kernels), one on a one-core machine.
THREADS = min(2, os.cpu_count() or 1)

_POOL: dict = {}  # process id -> executor (a forked child has none of its parent's threads: it makes its own)
_LOCK = threading.Lock()
_WORKER = threading.local()  # ``inside`` is set in the pool's threads while they run a job


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    with _LOCK:
        pid = os.getpid()
        if pid not in _POOL:
            _POOL.clear()
            _POOL[pid] = concurrent.futures.ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="ngp")
        return _POOL[pid]


def _here() -> bool:
    """Whether jobs run on the caller's thread: one thread, or the caller is itself a pool job."""
    return THREADS < 2 or getattr(_WORKER, "inside", False)


def thread_map(fn, items) -> list:
    """``[fn(item) for item in items]``, on :data:`THREADS` threads when there are several items. The caller's
    JAX precision (``jax.enable_x64``, a thread-local scope) and context variables hold in the workers; an exception
    of a job is raised here (the first in the order of ``items``)."""
    items = list(items)
    if len(items) < 2 or _here():
        return [fn(item) for item in items]  # nested calls run in their own thread: no pool deadlock
    x64 = bool(jax.config.jax_enable_x64)

    def run(item):
        _WORKER.inside = True
        try:
            with jax.enable_x64(x64):
                return fn(item)
        finally:
            _WORKER.inside = False

    # each job in a copy of the caller's context (e.g. warnings it silenced: ngp._validate.quiet; where its warnings
    # point: ngp._validate.job_context)
    jobs = [(job_context(), item) for item in items]
    return list(_pool().map(lambda job: job[0].run(run, job[1]), jobs))


def in_background(fn, *args) -> concurrent.futures.Future:
    """``fn(*args)`` started on a thread of its own (when :data:`THREADS` > 1; else run here), in the caller's JAX
    precision: a future whose ``result()`` returns its value or raises its exception. For a job that maps its own
    jobs onto the pool (:func:`thread_map`) while the caller prepares the next ones: the caller's host work then
    overlaps the pool's, and the pool's threads keep busy across the two (docs/posterior.md, "Layers in the
    background")."""
    fut = concurrent.futures.Future()
    x64 = bool(jax.config.jax_enable_x64)

    def run():
        try:
            with jax.enable_x64(x64):
                fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            fut.set_exception(e)

    if _here():
        run()
    else:  # in a copy of the caller's context, as thread_map's jobs
        threading.Thread(target=job_context().run, args=(run,), name="ngp-background",
                         daemon=True).start()
    return fut
