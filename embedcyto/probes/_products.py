"""The linear probe's two data products on every core, with the one-thread result bit for bit.

Why: the probe's fits run under :func:`~embedcyto.probes._multinomial.single_blas_thread` (many
small BLAS calls on spinning threads were measured many times slower on a busy machine), so a
HiCervix-sized fit, whose time is two skinny products per iteration (``X @ W`` and ``R^T X``,
N x 1,024 by 1,024 x 23), used one core of two. Here each product is cut into blocks of its
*output* (rows of ``X @ W``, columns of ``R^T X``) computed by single-threaded BLAS calls in
parallel threads (numpy releases the GIL in ``matmul``). Every output entry is then the same
dot product, over the same inner dimension in the same order, as in the one-call product:
results do not depend on the number of blocks (checked in ``tests/test_probes_products.py``),
so a probe row is the same whatever the machine's core count or joblib's worker count.

Small products stay one call: below :data:`MIN_WORK` multiply-adds, starting threads costs
more than it saves. Inside a fit, whose thread pool is already running, handing a block to it
costs tens of microseconds, and any product that makes two blocks of :data:`MIN_BLOCK` is cut:
on SIPaKMeD-sized sets (2,835 x 1,024 by 5 classes, 14.5 M multiply-adds) the two products went
from 1.09 / 1.59 ms to 0.64 / 0.89 ms.

:class:`Workers` runs the blocks: the products' and, in :mod:`embedcyto.probes._rows`, the
per-row float64 work on the logits, cut into row blocks (:meth:`Workers.row_blocks`). A fit
enters it once, so its thousands of calls share one thread pool, shut down when it ends.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Products smaller than this (multiply-adds) run as one call, unless a fit's pool is running.
MIN_WORK = 50_000_000
#: Multiply-adds per block at least: OpenBLAS computes small products (about 100^3 and below)
#: with other kernels, whose rounding differs from the large product's.
MIN_BLOCK = 4_000_000
#: Element-wise work on fewer elements than this per block (rows x columns) runs as one block:
#: below it, handing a block to a thread costs about what it saves.
MIN_ROW_BLOCK = 32_768
#: Row blocks of element-wise work start at multiples of this many rows.
ROW_ALIGN = 8
#: Block boundaries are multiples of this many rows or columns (a multiple of every BLAS
#: register tile; cut elsewhere, OpenBLAS computes the entries near a cut with another kernel).
ALIGN = 64


def available_threads() -> int:
    """BLAS threads this process may use now: its limit, which follows OPENBLAS_NUM_THREADS /
    OMP_NUM_THREADS and joblib's per-worker limits (one in a worker of a grid already running
    in parallel). Read *before* a fit enters its one-thread section."""
    from threadpoolctl import threadpool_info

    counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return max(1, min(counts)) if counts else 1


class Workers:
    """Up to ``threads`` threads for blocks of one computation, the first block in the caller's.

    Outside a ``with`` block each :meth:`run` starts and joins its own pool (a few hundred
    microseconds, nothing left behind). A fit makes thousands of calls, so it enters the object
    once: one pool then serves all its calls and is shut down when the fit leaves, so no thread
    outlives the fit (a later fork, joblib's workers, could not use it). Numpy releases the GIL
    in ``matmul`` and in element-wise and reduction loops over large arrays, so the blocks run
    on separate cores.
    """

    def __init__(self, threads: int = 1):
        self.threads = max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self._depth = 0

    def __enter__(self) -> Workers:
        if self._depth == 0 and self.threads > 1:
            self._pool = ThreadPoolExecutor(self.threads - 1)
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def pooled(self) -> bool:
        """Whether a fit's pool is running (handing out a block then costs little)."""
        return self._pool is not None

    def run(self, jobs) -> None:
        """Call every job (no argument), the first in this thread; return when all are done.
        Exceptions propagate. More jobs than threads queue on the pool."""
        if len(jobs) == 1:
            jobs[0]()
            return
        if self._pool is None:
            with ThreadPoolExecutor(len(jobs) - 1) as pool:
                self._wait(pool, jobs)
        else:
            self._wait(self._pool, jobs)

    @staticmethod
    def _wait(pool: ThreadPoolExecutor, jobs) -> None:
        futures = [pool.submit(job) for job in jobs[1:]]
        try:
            jobs[0]()
        finally:
            for future in futures:
                future.result()

    def row_blocks(self, n_rows: int, n_cols: int) -> list[tuple[int, int]]:
        """Row blocks for per-row element-wise work on an (n_rows, n_cols) array: one per thread
        when each holds at least :data:`MIN_ROW_BLOCK` elements, else one. Cuts are multiples
        of :data:`ROW_ALIGN` rows, so every block starts 64-byte aligned relative to the
        array, as in one call (numpy's SIMD loops then see each row as in one call)."""
        parts = max(1, min(self.threads, n_rows * n_cols // MIN_ROW_BLOCK, n_rows // ROW_ALIGN))
        cuts = sorted({ROW_ALIGN * (n_rows * i // parts // ROW_ALIGN)
                       for i in range(1, parts)} | {0, n_rows})
        return list(zip(cuts[:-1], cuts[1:]))


class BlockProducts:
    """``X @ W`` and ``R^T X`` for one data matrix ``X``, in ``threads`` output blocks."""

    def __init__(self, X: np.ndarray, threads: int = 1):
        self.X = X
        self.threads = max(1, int(threads))
        #: The threads the blocks run on; a fit enters it to keep one pool for all its calls.
        self.workers = Workers(self.threads)

    def _blocks(self, size: int, work: int) -> list[tuple[int, int]]:
        """Blocks of ``size`` output rows (or columns), cut at multiples of :data:`ALIGN` so
        that every entry sits at the same place in BLAS's register tiles as in one call (the
        last, partial tile included): only then is each entry computed the same way."""
        least = 2 * MIN_BLOCK if self.workers.pooled else MIN_WORK
        parts = self.threads if work >= least else 1
        parts = max(1, min(parts, size // ALIGN, work // MIN_BLOCK))
        cuts = sorted({min(size, ALIGN * round(size * i / parts / ALIGN))
                       for i in range(parts)} | {size})
        cuts = [0] + [c for c in cuts if c > 0]
        return list(zip(cuts[:-1], cuts[1:]))

    def _run(self, jobs) -> None:
        """Run the blocks on :attr:`workers` (see :class:`Workers`)."""
        self.workers.run(jobs)

    def xw(self, W: np.ndarray) -> np.ndarray:
        """``X @ W`` (``W`` in the data's dtype), rows computed in blocks."""
        X = self.X
        out = np.empty((X.shape[0], W.shape[1]), dtype=np.result_type(X, W))
        blocks = self._blocks(X.shape[0], X.size * W.shape[1])
        self._run([lambda a=a, b=b: np.matmul(X[a:b], W, out=out[a:b]) for a, b in blocks])
        return out

    def rtx(self, R: np.ndarray) -> np.ndarray:
        """``R^T X`` (``R`` in the data's dtype), columns computed in blocks."""
        X, Rt = self.X, R.T
        out = np.empty((R.shape[1], X.shape[1]), dtype=np.result_type(X, R))
        blocks = self._blocks(X.shape[1], X.size * R.shape[1])
        self._run([lambda a=a, b=b: np.matmul(Rt, X[:, a:b], out=out[:, a:b])
                   for a, b in blocks])
        return out
