"""Where joblib runs work: local processes or threads, or a Dask or Ray cluster.

Probe grids fan out with ``joblib.Parallel``; this module only chooses joblib's backend for the
duration of a block (``joblib.parallel_config``), so no scheduling code of embedcyto's own is
involved. Results never depend on the backend or the number of jobs: every task seeds its own
generators and results are collected in task order.

- ``loky`` (default): worker processes on this machine.
- ``threading``: threads on this machine (no process start-up; numpy/sklearn release the GIL).
- ``dask``: a ``dask.distributed`` cluster at ``scheduler`` (``tcp://host:8786``), or a local
  cluster started for the block and closed after it. Needs ``pip install 'embedcyto[dask]'``.
- ``ray``: a Ray cluster at ``scheduler`` (``ray://host:10001`` or ``auto``), or a local Ray
  started for the block. Needs ``pip install 'embedcyto[ray]'``.

On a cluster, every worker must see the store folder at the same path (a shared file system).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from embedcyto.errors import EmbedcytoError

log = logging.getLogger(__name__)

BACKENDS = ("loky", "threading", "dask", "ray")
CLUSTER_BACKENDS = ("dask", "ray")


def resolve_n_jobs(backend: str | None, n_jobs: int | None) -> int:
    """Jobs to ask joblib for: None means 1 locally and every worker on a cluster (-1).

    joblib runs ``n_jobs=1`` in the calling process whatever the backend, so a cluster backend
    with one job would never reach the cluster.
    """
    if n_jobs is None:
        return -1 if backend in CLUSTER_BACKENDS else 1
    if n_jobs == 0:
        raise EmbedcytoError("n_jobs must not be 0: use a positive number, or -1 for all")
    if n_jobs == 1 and backend in CLUSTER_BACKENDS:
        log.warning("`n_jobs=1` runs everything in this process, not on the %s cluster; "
                    "leave it unset to use every worker", backend)
    return int(n_jobs)


def _missing(backend: str, err: ImportError) -> EmbedcytoError:
    return EmbedcytoError(
        f"the {backend} backend needs the {backend} package ({err.name or err}): "
        f"pip install 'embedcyto[{backend}]'"
    )


def check_backend(backend: str | None, scheduler: str | None = None) -> None:
    """Refuse an unknown backend, or a scheduler address for a local backend."""
    if backend is not None and backend not in BACKENDS:
        raise EmbedcytoError(f"unknown joblib backend {backend!r}; choose from "
                             f"{', '.join(BACKENDS)}")
    if scheduler and backend not in CLUSTER_BACKENDS:
        raise EmbedcytoError(f"a scheduler address applies to the dask and ray backends only, "
                             f"not {backend or 'the default'}: drop it or choose `backend='dask'`")


@contextmanager
def joblib_backend(backend: str | None = None, *, scheduler: str | None = None,
                   n_jobs: int | None = None) -> Iterator[int]:
    """Make ``backend`` joblib's backend inside the block; yields the ``n_jobs`` to use.

    Args:
        backend: one of :data:`BACKENDS`; None keeps joblib's default (loky).
        scheduler: cluster address for "dask" or "ray"; None starts a local one.
        n_jobs: jobs for ``joblib.Parallel``; None picks :func:`resolve_n_jobs`'s default.

    Raises:
        EmbedcytoError: unknown backend, an address for a local backend, a missing optional
            package (the message names the extra to install), or a cluster that cannot be
            reached.
    """
    from joblib import parallel_config

    check_backend(backend, scheduler)
    jobs = resolve_n_jobs(backend, n_jobs)
    if backend is None:
        yield jobs
    elif backend == "dask":
        with _dask_client(scheduler, jobs), parallel_config(backend="dask"):
            yield jobs
    elif backend == "ray":
        with _ray_session(scheduler), parallel_config(backend="ray"):
            yield jobs
    else:
        with parallel_config(backend=backend):
            yield jobs


@contextmanager
def _dask_client(scheduler: str | None, n_jobs: int):
    """A client of the cluster at ``scheduler``, or of a local cluster made for the block."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:
        raise _missing("dask", err) from err
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as err:
            raise EmbedcytoError(f"cannot reach the Dask scheduler at {scheduler} ({err}); "
                                 "check the address (tcp://HOST:8786) and that it runs") from err
        cluster = None
    else:
        workers = n_jobs if n_jobs > 0 else os.cpu_count() or 1
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextmanager
def _ray_session(scheduler: str | None):
    """Ray with joblib's ``ray`` backend registered; a local Ray unless ``scheduler``."""
    try:
        import ray
        from ray.util.joblib import register_ray
    except ImportError as err:
        raise _missing("ray", err) from err
    register_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=scheduler or None, ignore_reinit_error=True,
                     log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError) as err:
            raise EmbedcytoError(f"cannot start or reach Ray at {scheduler or 'a local node'} "
                                 f"({err}); check the address (ray://HOST:10001)") from err
    try:
        yield
    finally:
        if started:
            ray.shutdown()
