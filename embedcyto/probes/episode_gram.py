"""Few-shot runs scored from one Gram matrix of training rows and queries.

Why: a nearest-prototype episode's distances are fixed by the dot products of the queries with
the episode's support rows. A prototype is a weighted sum of support rows in a frame that does
not depend on the episode (ProtoNet: the features; SimpleShot: the features centred on the
episode's support mean and L2-normalised, whose weights are the rows' inverse norms), so with
``G = T Q^T`` (training rows ``T``, queries ``Q``, in that frame)

    ``q·p_c = sum_k a_k G[k, q]``  (``a_k``: the support row's weight, ``1 / K`` for a mean).

The dense path (:func:`embedcyto.probes.episodes.simpleshot_distances`) builds every episode's
prototypes and multiplies them with all queries: ``E·C·d`` multiply-adds per query and run, as
many at 1 shot as at 16. Here ``G`` is computed once for all the runs of a unit (the 5 shot
values × 3 seeds of ``embedcyto probe``) and an episode gathers ``C·K`` of its rows:
``E·C·K`` gather-adds per query and run. A gather-add (scipy's sparse-times-dense product) costs
about :data:`GATHER_COST` dense multiply-adds, so a run is scored this way when its gathers
are cheaper than its prototypes' product, and the runs that qualify together must save more
than ``G`` costs (``n_train·d`` per query) — :func:`gram_plan`.

SimpleShot's support centring fits the form: with the episode mean ``m``, weights
``a_k = 1 / (K |t_k - m|)`` and ``s_c = sum_k a_k`` over class ``c``,
``(q - m)·p_c = sum_k a_k G[k, q] - s_c (q·m) - m·p_c`` and
``|q - m|² = |q|² - 2 q·m + |m|²``;
``q·m`` is one small product (``E·d`` per query), ``m·p_c`` and ``|p_c|²`` come from the
prototypes, built once per run. Distances do not change when every row is shifted by the same
vector, so both sides are centred on the training mean first: smaller dot products, less
float32 rounding than the raw features' (CLIP-style embeddings share a large offset).

Memory stays within the episodes' float budget: ``G`` is never held whole. The queries are
taken in chunks of ``budget // n_train`` (at least :data:`MIN_CHUNK`), and each run's episodes
leave a confusion matrix per episode, which adds up over the chunks
(:mod:`embedcyto.probes._planes`). The numbers are those of the dense path up to the float
rounding (a near-tie between two classes can flip); a test checks every episode's predictions
against the one-episode estimators.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from embedcyto.errors import ProbeError
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._multinomial import single_blas_thread
from embedcyto.probes._planes import batch_confusions, chunk_levels, ordered_map
from embedcyto.probes._products import BlockProducts

#: Dense float32 multiply-adds (a matrix product's) that cost as much as one sparse gather-add
#: (scipy's CSR times a dense block): ~86e9 against ~1.5e9 per second and core on the 2-core
#: reference machine (``benchmarks/bench_probe.py`` prints the episodes' time against the
#: product bound).
GATHER_COST = 48
#: Shots from which the gathers use torch's sparse product rather than scipy's: per HiCervix-
#: sized chunk, torch's ran 1.5-1.8x faster at 8 and 16 shots, scipy's 3x faster at 1.
TORCH_GATHER_SHOTS = 4
#: Floats of one batch of class planes (distances and their metrics' work arrays): a few MiB,
#: so a batch's many passes over its planes stay in the processor's cache.
PLANE_FLOATS = 1 << 19
#: Queries per chunk at least, whatever the budget: fewer would make the chunk's Gram product
#: and the Python work per chunk dominate.
MIN_CHUNK = 32


@dataclass(frozen=True)
class GramForm:
    """A nearest-prototype method in Gram form: training rows and queries in one frame
    (float32, or float64 for float64 features; C-contiguous), and whether each episode is centred on its support mean with its
    rows L2-normalised (SimpleShot's support centring; otherwise prototypes are plain means)."""

    train: np.ndarray
    test: np.ndarray
    support_centred: bool = False


def _frame(X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(X, dtype=np.result_type(X.dtype, np.float32))


def protonet_form(X_train: np.ndarray, X_test: np.ndarray) -> GramForm:
    """ProtoNet: squared distances to raw class means (centred on the training mean, which
    changes no distance)."""
    mean = X_train.mean(axis=0)
    return GramForm(_frame(X_train - mean), _frame(X_test - mean))


def simpleshot_form(X_train: np.ndarray, X_test: np.ndarray, *, centre: str = "support"
                    ) -> GramForm:
    """SimpleShot (CL2N) with either centring of :func:`~embedcyto.probes.episodes.
    simpleshot_distances`: on the training mean, rows transformed once; on each episode's
    support mean, through the weights described in the module docstring."""
    mean = X_train.mean(axis=0)
    if centre == "train":
        return GramForm(_frame(l2_normalise(X_train - mean)), _frame(l2_normalise(X_test - mean)))
    if centre != "support":
        raise ProbeError(f"unknown centring {centre!r}; choose support or train")
    return GramForm(_frame(X_train - mean), _frame(X_test - mean), support_centred=True)


def gram_plan(shots, n_episodes: int, n_classes: int, n_train: int, dim: int) -> list[bool]:
    """Which runs (one per entry of ``shots``) are scored through the Gram matrix: those whose
    gathers cost less than their prototypes' product, provided that together they save more
    than the Gram matrix costs (all costs per query, in dense multiply-adds)."""
    saving = [n_episodes * n_classes * (dim - GATHER_COST * int(k)) for k in shots]
    if sum(s for s in saving if s > 0) <= n_train * dim:
        return [False] * len(saving)
    return [s > 0 for s in saving]


def query_chunk(n_train: int, budget: int) -> int:
    """Queries per chunk: the chunk's Gram block (``n_train`` × chunk floats) within budget."""
    return max(MIN_CHUNK, int(budget) // max(1, n_train))


@dataclass(frozen=True)
class _Terms:
    """The query-independent part of one run's distances, per episode: the gathers (one sparse
    ``(episodes·C, n_train)`` matrix of weights per batch), ``s_c`` and ``m·p_c`` and ``|p_c|²``
    ``(E, C)``, the mean ``m`` ``(E, d)`` and ``|m|²`` (support centring only)."""

    batches: list[tuple[int, int]]
    gathers: list
    s: np.ndarray
    mp: np.ndarray
    pp: np.ndarray
    m: np.ndarray | None
    mm: np.ndarray | None


def episode_terms(form: GramForm, support: np.ndarray, budget: int, per_batch: int) -> _Terms:
    """The terms of a run's episodes (``support``: ``(E, C, K)`` training rows), prototypes
    built ``budget`` floats at a time; the gathers cut in batches of ``per_batch`` episodes."""
    E, C, K = support.shape
    d = form.train.shape[1]
    dtype = form.train.dtype
    a = np.empty((E, C, K), dtype=dtype)
    s, mp, pp = (np.zeros((E, C), dtype=dtype) for _ in range(3))
    m = np.zeros((E, d), dtype=dtype) if form.support_centred else None
    step = max(1, int(budget) // (C * K * d))
    for e0 in range(0, E, step):
        rows = form.train[support[e0:e0 + step]]  # (e, C, K, d)
        if form.support_centred:
            mean = rows.mean(axis=(1, 2))  # (e, d)
            rows -= mean[:, None, None, :]  # in place: the gather is a copy already
            diff = rows.reshape(-1, d)
            inv = 1.0 / np.maximum(np.linalg.norm(diff, axis=1), 1e-12)
            diff *= inv[:, None]
            protos = rows.mean(axis=2)  # (e, C, d)
            a[e0:e0 + step] = (inv / K).reshape(rows.shape[:3])
            s[e0:e0 + step] = a[e0:e0 + step].sum(axis=2)
            mp[e0:e0 + step] = np.einsum("ecd,ed->ec", protos, mean)
            m[e0:e0 + step] = mean
        else:
            protos = rows.mean(axis=2)
            a[e0:e0 + step] = 1.0 / K
        pp[e0:e0 + step] = (protos * protos).sum(axis=2)
    batches = [(e0, min(E, e0 + per_batch)) for e0 in range(0, E, per_batch)]
    n_train = form.train.shape[0]
    gathers = [_gather_matrix(a[e0:e1].ravel(), support[e0:e1].ravel(), ((e1 - e0) * C, n_train),
                              K) for e0, e1 in batches]
    mm = None if m is None else (m * m).sum(axis=1)
    return _Terms(batches, gathers, s, mp, pp, m, mm)


class _TorchGather:
    """torch's CSR matrix behind numpy's ``@`` (the weights' dtype in and out)."""

    def __init__(self, matrix):
        self.matrix = matrix

    def __matmul__(self, dense: np.ndarray) -> np.ndarray:
        import torch

        return (self.matrix @ torch.from_numpy(np.ascontiguousarray(dense))).numpy()


def _gather_matrix(weights: np.ndarray, rows: np.ndarray, shape: tuple[int, int], K: int):
    """The sparse ``(episodes·C, n_train)`` matrix holding each class row's ``K`` support
    weights: torch's CSR product from :data:`TORCH_GATHER_SHOTS` shots (when torch is there),
    scipy's below (each is the faster there)."""
    indptr = np.arange(0, rows.size + 1, K)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or K < TORCH_GATHER_SHOTS:
        from scipy import sparse

        return sparse.csr_matrix((weights, rows.astype(np.int32), indptr), shape=shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta state"
        return _TorchGather(torch.sparse_csr_tensor(
            torch.from_numpy(indptr), torch.from_numpy(rows.astype(np.int64)),
            torch.from_numpy(weights), size=shape, check_invariants=False))


def _planes(form: GramForm, terms: _Terms, b: int, gram: np.ndarray, qm_all: np.ndarray | None,
            q_sq: np.ndarray) -> np.ndarray:
    """Squared distances of batch ``b`` of a run's episodes to one chunk of queries, as class
    planes ``(e, C, n)``, in the dense scorers' order of operations. ``qm_all``: ``q·m`` of
    all the run's episodes and these queries (support centring; one product per run and
    chunk rather than one per batch)."""
    e0, e1 = terms.batches[b]
    C = terms.pp.shape[1]
    d2 = np.asarray(terms.gathers[b] @ gram).reshape(e1 - e0, C, -1)  # q·p_c (plain means)
    if form.support_centred:
        qm = qm_all[e0:e1]  # (e, n): q·m
        d2 -= terms.s[e0:e1, :, None] * qm[:, None, :]  # q·p_c
        d2 -= terms.mp[e0:e1, :, None]  # (q - m)·p_c
        norm = np.sqrt(np.maximum(q_sq[None, :] - 2.0 * qm + terms.mm[e0:e1, None], 0.0))
        inv = 1.0 / np.maximum(norm, 1e-12)
        d2 *= (2.0 * inv)[:, None, :]  # doubling is exact: the dense path's order of rounding
        np.subtract(((norm * inv) ** 2)[:, None, :], d2, out=d2)
    else:
        d2 *= 2.0
        np.subtract(q_sq[None, None, :], d2, out=d2)
    d2 += terms.pp[e0:e1, :, None]
    return d2


def run_confusions(form: GramForm, draws: list, y_test: np.ndarray,
                   n_classes: int, levels: list[tuple], temperature: float, budget: int,
                   threads: int) -> list[dict[str, np.ndarray]]:
    """Per run (``draws``: one function per run returning its ``(E, C, K)`` support rows, called
    beside other runs' terms): its episodes' confusion matrices
    (:func:`~embedcyto.probes._planes.batch_confusions`' keys), summed over query chunks.

    Batches of episodes are scored whole (distances and confusions) by ``threads`` threads,
    BLAS held to one thread (see :func:`~embedcyto.probes._planes.ordered_map`); each chunk's
    Gram block is one product, so the numbers do not depend on ``threads``."""
    n_train, n = form.train.shape[0], form.test.shape[0]
    chunk = query_chunk(n_train, budget)
    q_sq = (form.test * form.test).sum(axis=1)
    per_batch = max(1, PLANE_FLOATS // (n_classes * min(chunk, n)))
    totals: list[dict[str, np.ndarray]] = [{} for _ in draws]
    products = BlockProducts(form.train, threads)
    with single_blas_thread():
        terms = list(ordered_map(draws, lambda draw: episode_terms(form, draw(), budget, per_batch),
                                 min(threads, len(draws))))

        def jobs():
            for q0 in range(0, n, chunk):
                q1 = min(n, q0 + chunk)
                # (n_train, chunk), its row blocks on every core (one call's bits, see
                # embedcyto.probes._products): one thread would leave the other core idle
                gram = products.xw(form.test[q0:q1].T)
                where = (y_test[q0:q1], chunk_levels(levels, n, q0, q1))
                for r, t in enumerate(terms):
                    qm = None if t.m is None else t.m @ form.test[q0:q1].T  # (E, chunk): q·m
                    for b in range(len(t.batches)):
                        yield r, b, where, gram, qm, q_sq[q0:q1]

        def work(job):
            r, b, (y, lv), gram, qm, sq = job
            planes = _planes(form, terms[r], b, gram, qm, sq)
            return r, b, batch_confusions(planes, y, n_classes, lv, temperature)

        for r, b, confusions in ordered_map(jobs(), work, threads):
            e0, e1 = terms[r].batches[b]
            for key, cm in confusions.items():
                if key not in totals[r]:
                    totals[r][key] = np.zeros((terms[r].s.shape[0], *cm.shape[1:]),
                                              dtype=np.int64)
                totals[r][key][e0:e1] += cm
    return totals
