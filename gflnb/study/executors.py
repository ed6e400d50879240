"""Where a sweep's points run: this machine's threads, a Dask cluster, or Slurm jobs through submitit.

    gflnb sweep GRID                                  # local: --jobs threads on this machine (the default)
    gflnb sweep GRID --executor dask://HOST:PORT      # a running Dask ``distributed`` scheduler
    gflnb sweep GRID --executor slurm --partition gpu --time 1440 --cpus-per-task 8 --gpus-per-node 1
    gflnb sweep GRID --executor submitit-local        # submitit's local cluster: one process per point

Only *where* :func:`gflnb.study.sweep.run_point` runs changes: every executor runs the same task (the
point's shell command, then its Fig. 2 background pass), which writes the same record. Dask gets
``pure=False``: a point is a side effect (a training run), never a cached value.

Slurm goes through ``submitit`` rather than ``dask-jobqueue``: a point is hours of training that
must outlive the driver, and submitit makes each point one ``sbatch`` job of its own, queued,
accounted (``sacct``) and requeued by Slurm, that runs to its end when the driver is gone.
dask-jobqueue instead starts long-lived Dask workers as jobs and hands them tasks from a scheduler
in the driver; a task dies with that scheduler, and a worker job's wall-time limit has to cover
several points it cannot know in advance.

A point in flight has a ``running`` record (see :func:`task_identity`) so that a restarted driver
does not start it twice; :func:`alive` decides, per executor, whether its job has died (then it is
rerun).
"""
from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

# Job states after which a Slurm job runs no more (squeue's and sacct's names; anything else,
# PENDING, RUNNING, REQUEUED, ..., may still write its record)
SLURM_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
               "TIMEOUT", "REVOKED")
KINDS = ("local", "dask://HOST:PORT", "slurm", "submitit-local")


@dataclass(frozen=True)
class SlurmOptions:
    """``sbatch`` resources of one point (submitit's names in the comments)."""
    partition: Optional[str] = None  # slurm_partition
    time_min: int = 1440  # timeout_min: the point's wall-time limit; submitit's own default is 5 minutes
    cpus_per_task: Optional[int] = None  # cpus_per_task
    gpus_per_node: Optional[int] = None  # gpus_per_node


class Backend:
    """A ``concurrent.futures``-style executor for points, and the name its records carry."""
    name = "local"
    client: Any = None  # a dask Client, for alive()
    max_in_flight: Optional[int] = None  # None: every point is handed over at once (the cluster queues)

    def submit(self, fn: Callable, *args: Any) -> tuple[Future, Optional[str]]:
        """Start ``fn(*args)``; returns its future and, where the driver learns it at once, the job id."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalBackend(Backend):
    def __init__(self, jobs: int) -> None:
        self.pool, self.max_in_flight = ThreadPoolExecutor(max_workers=jobs), jobs

    def submit(self, fn: Callable, *args: Any) -> tuple[Future, Optional[str]]:
        return self.pool.submit(fn, *args), None

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class DaskBackend(Backend):
    name = "dask"

    def __init__(self, address: str, jobs: Optional[int]) -> None:
        Client = _extra("distributed").Client
        try:
            self.client = Client(address, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise RuntimeError(f"no Dask scheduler at {address}: {e}") from None
        self.pool = self.client.get_executor(pure=False)  # a point is a run, never a cached result
        self.max_in_flight = jobs

    def submit(self, fn: Callable, *args: Any) -> tuple[Future, Optional[str]]:
        return self.pool.submit(fn, *args), None  # the task records its own key once it starts

    def close(self) -> None:
        self.client.close()


class SubmititBackend(Backend):
    """One submitit job per point; a thread per job turns ``job.result()`` into a Future."""

    def __init__(self, cluster: str, folder: Path, opts: SlurmOptions, jobs: Optional[int]) -> None:
        submitit = _extra("submitit")
        self.name = "slurm" if cluster == "slurm" else "submitit-local"
        self.ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params: dict[str, Any] = dict(name="gflnb-point", timeout_min=int(opts.time_min),
                                      cpus_per_task=opts.cpus_per_task, gpus_per_node=opts.gpus_per_node)
        if opts.partition:
            params["slurm_partition"] = opts.partition
        self.ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        # submitit's local cluster starts every job at once: a single box keeps to --jobs
        self.max_in_flight = jobs if cluster == "slurm" else (jobs or 2)

    def submit(self, fn: Callable, *args: Any) -> tuple[Future, Optional[str]]:
        job = self.ex.submit(fn, *args)
        fut: Future = Future()
        fut.set_running_or_notify_cancel()

        def wait() -> None:
            try:
                fut.set_result(job.result())
            except BaseException as e:  # the job died (killed, timed out, cancelled): the point is lost
                fut.set_exception(e)
        threading.Thread(target=wait, name=f"submitit-{job.job_id}", daemon=True).start()
        return fut, str(job.job_id)


def _extra(module: str) -> Any:
    """``module`` of the ``cluster`` extra, or one line saying how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"--executor needs {module}: .venv/bin/pip install -e '.[cluster]' (make setup does)"
                           ) from None


def open_backend(spec: str, jobs: Optional[int], folder: Path, slurm: Optional[SlurmOptions] = None,
                 default_jobs: int = 2) -> Backend:
    """The executor ``spec`` names (:data:`KINDS`); ``folder`` holds submitit's job files."""
    if spec == "local":
        return LocalBackend(max(1, jobs or default_jobs))
    if spec.startswith("dask://"):
        addr = spec[len("dask://"):]
        if not addr:
            raise ValueError("--executor dask://HOST:PORT needs the scheduler's address")
        return DaskBackend(addr if "://" in addr else f"tcp://{addr}", jobs)
    if spec in ("slurm", "submitit-local"):
        return SubmititBackend("slurm" if spec == "slurm" else "local", folder, slurm or SlurmOptions(),
                               jobs or (None if spec == "slurm" else default_jobs))
    raise ValueError(f"unknown executor {spec!r}; one of {', '.join(KINDS)}")


# ------------------------------------------------------------------ inside the point's task
def task_identity() -> dict[str, Any]:
    """Where the calling task runs: ``executor``, ``job_id`` (Slurm or local submitit job, Dask task
    key), ``worker`` (a Dask worker's address), ``host`` and ``worker_pid``."""
    out: dict[str, Any] = dict(executor="local", job_id=None, worker=None, host=socket.gethostname(),
                               worker_pid=os.getpid())
    if os.environ.get("SUBMITIT_EXECUTOR"):  # set by submitit in its jobs, local and slurm alike
        import submitit
        env = submitit.JobEnvironment()
        out.update(executor="slurm" if env.cluster == "slurm" else "submitit-local", job_id=str(env.job_id))
    elif "distributed" in sys.modules:
        from distributed import get_worker
        try:
            w = get_worker()
        except ValueError:  # distributed imported, but this is no worker's task
            return out
        out.update(executor="dask", job_id=str(w.get_current_task()), worker=w.address)
    return out


def process_started(pid: int) -> Optional[float]:
    """The process's start time (seconds since the epoch), which tells it from a later one with its pid."""
    try:
        import psutil
        return psutil.Process(pid).create_time()
    except Exception:
        return None


def die_with_parent() -> None:
    """``preexec_fn``: the point's process is killed when the process that started it dies (Linux), so a
    killed worker leaves no orphan training beside the point's rerun. ipykernel exits with its parent."""
    if _PRCTL is not None:
        _PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None  # resolved before any fork


# ------------------------------------------------------------------ is a running record's job alive?
def pid_alive(pid: int, started: Optional[float] = None) -> bool:
    """Whether process ``pid`` runs on this host (and is the one that started at ``started``)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        import psutil
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except ImportError:
        return True
    except Exception:  # gone between the two checks
        return False


def _slurm_alive(job_id: str) -> Optional[bool]:
    from submitit.slurm.slurm import SlurmInfoWatcher
    # one sacct call, on a watcher of its own: submitit's shared one would poll for this job from now on
    state = SlurmInfoWatcher(delay_s=0).get_state(str(job_id), mode="force").upper()
    if state.split()[0] in SLURM_ENDED:
        return False
    return None if state == "UNKNOWN" else True  # UNKNOWN: no sacct here, or it forgot the job


def _dask_alive(client: Any, worker: str, pid: int, started: Optional[float]) -> bool:
    # The scheduler's task table is no witness: a task whose driver went away is forgotten there
    # but keeps running on its worker's thread. The point's process on that worker is.
    if worker not in client.scheduler_info(n_workers=-1)["workers"]:
        return False
    return bool(client.run(pid_alive, pid, started, workers=[worker])[worker])


def alive(rec: dict[str, Any], client: Any = None) -> Optional[bool]:
    """Whether the job of a ``running`` record still runs: True, False (dead: rerun the point), or
    None where this driver cannot tell (the caller does not start it twice).

    On the record's own host its process decides (every executor); a Slurm job's state comes from
    ``sacct`` (ended without a record: dead); a Dask point's process is looked up on its worker
    (the worker gone: dead)."""
    pid = rec.get("pid")
    if pid and rec.get("host") == socket.gethostname():
        return pid_alive(pid, rec.get("pid_started"))
    if rec.get("executor") == "slurm" and rec.get("job_id"):
        return _slurm_alive(rec["job_id"])
    if rec.get("executor") == "dask" and client is not None and rec.get("worker") and pid:
        return _dask_alive(client, rec["worker"], pid, rec.get("pid_started"))
    return None


# ------------------------------------------------------------------ the driver's loop
LOST_RETRIES = 2  # a point whose task is lost (worker gone, job killed) is handed over again this often


def drive(backend: Backend, task: Callable[[Any, Any], dict], grid: Any, points: list, claim: Callable,
          lost: Callable[[Any, Any, BaseException], dict]) -> Iterator[dict]:
    """Run ``task(grid, p)`` for every point on ``backend``, at most ``backend.max_in_flight`` at a
    time; yields each point's record as it finishes. ``claim(grid, p, executor, job_id)`` records a
    job the driver learns the id of at submission (a queued Slurm job is in flight too); a task that
    comes back with an exception instead of a record (``task`` never raises: its worker or job died,
    or it was cancelled) is handed over again, and after :data:`LOST_RETRIES` recorded by ``lost``."""
    pending, flying, losses = list(points), {}, {}
    cap = backend.max_in_flight or max(1, len(points))
    while pending or flying:
        while pending and len(flying) < cap:
            p = pending.pop(0)
            fut, job_id = backend.submit(task, grid, p)
            if job_id is not None:
                claim(grid, p, backend.name, job_id)
            flying[fut] = p
        done, _ = wait(flying, return_when=FIRST_COMPLETED)
        for fut in done:
            p = flying.pop(fut)
            try:
                rec = fut.result()
            except (Exception, CancelledError) as e:
                losses[p.id] = losses.get(p.id, 0) + 1
                if losses[p.id] <= LOST_RETRIES:
                    pending.append(p)
                    continue
                rec = lost(grid, p, e)
            yield rec
