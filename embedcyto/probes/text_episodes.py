"""Batched few-shot scorers of the text-aware probes, for the same episodes as SimpleShot.

A scorer is built once per (store, test split) — it L2-normalises the features, multiplies the
test rows by the text embeddings and (memory allowing) by every training row, once — and then
scores a batch of episodes ``idx`` [E, C, K] (support row indices into the training split, class
c in ``idx[:, c]``) — training chunks of episodes sized for the cache and spread over threads,
then the test rows scored per group of episodes — returning negative logits [n_test, E, C]
(the layout of :func:`embedcyto.probes.episodes.run_episodes`' distance scorers; lower is
better: ``argmin`` predicts, ``softmax(-score)`` gives the method's probabilities).

Tip-Adapter picks β and α per episode on validation rows: K rows per class drawn from the
validation split with a generator seeded from the episode's support indices, so the choice
depends on the episode and the validation split only — never on a test row — and every model
gets the same validation rows for the same episode.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedcyto.errors import ProbeError
from embedcyto.probes import textcore as tc
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._multinomial import single_blas_thread
from embedcyto.probes._products import available_threads
from embedcyto.probes.textprobes import TIP_ALPHAS, TIP_BETAS

#: Largest test x train product kept in memory (floats); above it, products are per episode.
PRODUCT_BUDGET = 1 << 28
#: Bytes of Gram matrices trained together (see ``_chunks``): about half a core's L2 cache.
CACHE_BYTES = 1 << 20
#: Support x test products gathered at once when scoring the test rows (floats; half the
#: episode runner's default batch budget).
EVAL_FLOATS = 1 << 22
#: Bytes of one episode's support x test affinities that Tip-Adapter transforms at once.
BLOCK_BYTES = 1 << 20
TEXT_METHODS = ("zeroshot", "textlinear", "clap", "tipadapter", "tipadapter_f", "lppp")


class _Prepared:
    def __init__(self, X_train, X_test, text, logit_scale, X_val=None, y_val=None):
        dtype = np.float32 if np.asarray(X_train).dtype != np.float64 else np.float64
        self.Xn = l2_normalise(np.asarray(X_train, dtype=dtype))
        self.Q = l2_normalise(np.asarray(X_test, dtype=dtype))
        self.T = l2_normalise(np.asarray(text, dtype=dtype))
        if self.T.shape[1] != self.Xn.shape[1]:
            raise ProbeError(f"text embeddings have {self.T.shape[1]} dimensions, the features "
                             f"{self.Xn.shape[1]}")
        self.scale = float(logit_scale)
        self.XT = self.Xn @ self.T.T
        self.Qt = self.Q @ self.T.T
        self.QtT = np.ascontiguousarray(self.Qt.T)  # [C, q]
        fits = self.Q.shape[0] * self.Xn.shape[0] <= PRODUCT_BUDGET
        # training rows x test rows, so that an episode's rows are gathered as whole rows
        self.XQ = self.Xn @ self.Q.T if fits else None
        self.V = None if X_val is None else l2_normalise(np.asarray(X_val, dtype=dtype))
        self.y_val = None if y_val is None else np.asarray(y_val, dtype=np.int64)

    def support(self, idx: np.ndarray):
        E, C, K = idx.shape
        flat = idx.reshape(E, C * K)
        Y = np.broadcast_to(np.repeat(np.eye(C, dtype=self.Xn.dtype), K, axis=0), (E, C * K, C))
        return flat, np.ascontiguousarray(Y)

    def support_rows(self, rows: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
        """Support x test cosines [..., n, q] of ``rows`` [..., n] and the test rows ``cols``,
        a new array (row gathers: column gathers were 15x slower)."""
        if self.XQ is not None:
            return self.XQ[rows, cols]
        return np.matmul(self.Xn[rows], self.Q[cols].T)

    def gram(self, flat):
        F = self.Xn[flat]
        return tc.mm(F, F.transpose(0, 2, 1))

    def val_rows(self, idx: np.ndarray) -> np.ndarray:
        """K validation rows per class for each episode, seeded by the episode's supports."""
        if self.V is None:
            raise ProbeError("Tip-Adapter's β and α are chosen on the validation split, and "
                             "this store has none; add a val split or use another method")
        E, C, K = idx.shape
        pools = [np.flatnonzero(self.y_val == c) for c in range(C)]
        if any(len(p) == 0 for p in pools):
            raise ProbeError("a class has no validation image; Tip-Adapter needs one per class")
        out = np.empty((E, C * K), dtype=np.int64)
        for e in range(E):
            seed = int.from_bytes(hashlib.sha256(idx[e].tobytes()).digest()[:8], "little")
            rng = np.random.default_rng(seed)
            out[e] = np.concatenate([rng.choice(p, K, replace=len(p) < K) for p in pools])
        return out


_LAST: dict = {}


def _digest(*arrays) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a) if a is not None else np.zeros(0)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _prepared(X_train, X_test, text, logit_scale, X_val, y_val) -> _Prepared:
    """The prepared products of these arrays, reused while the same arrays come back: the
    runner calls once per (shots, seed), and the test x train product is the costly part
    (464 GFLOP at HiCervix's size). One entry is kept, keyed by the arrays' contents."""
    key = (_digest(X_train, X_test, text, X_val, y_val), float(logit_scale))
    if _LAST.get("key") != key:
        _LAST.clear()
        _LAST.update(key=key, value=_Prepared(X_train, X_test, text, logit_scale, X_val, y_val))
    return _LAST["value"]


def zeroshot_logits(X_test, text, logit_scale) -> np.ndarray:
    """Zero-shot logits [n_test, C]."""
    return float(logit_scale) * l2_normalise(np.asarray(X_test, dtype=np.float64)) @ \
        l2_normalise(np.asarray(text, dtype=np.float64)).T


def _chunks(E: int, n: int, itemsize: int, threads: int) -> list[slice]:
    """Episodes trained together: as many as keep their n x n Gram matrices within
    ``CACHE_BYTES`` (so every step's product reads them from cache), and at least one chunk per
    thread."""
    size = max(1, min(CACHE_BYTES // (n * n * itemsize), -(-E // threads)))
    return [slice(s, min(s + size, E)) for s in range(0, E, size)]


def _each_chunk(work, E: int, n: int, p: _Prepared, threads: int) -> None:
    """``work(part)`` for every chunk, on ``threads`` threads (one BLAS thread each: numpy
    releases the GIL in products and ufuncs, and each chunk writes its own episodes)."""
    parts = _chunks(E, n, p.Xn.itemsize, threads)
    if threads == 1 or len(parts) == 1:
        for part in parts:
            work(part)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(work, parts):  # re-raises a chunk's error
            pass


def _test_blocks(n: int, q: int) -> list[slice]:
    """Test rows scored together against one episode's n supports: about ``BLOCK_BYTES`` of
    affinities, so the passes over them after the product stay in cache."""
    size = max(64, BLOCK_BYTES // (4 * n))
    return [slice(s, min(s + size, q)) for s in range(0, q, size)]


def _groups(part: slice, n: int, q: int) -> list[slice]:
    """Episodes of ``part`` whose support x test rows are gathered together (at most
    ``EVAL_FLOATS`` floats)."""
    size = max(1, EVAL_FLOATS // (n * q))
    return [slice(s, min(s + size, part.stop)) for s in range(part.start, part.stop, size)]


def _textlinear(p: _Prepared, idx, constraint: str, steps: int, threads: int):
    flat, Y = p.support(idx)
    E, n = flat.shape
    logits = np.empty((E, idx.shape[1], p.Q.shape[0]), dtype=p.Xn.dtype)

    def work(part):
        G, S, Yp = p.gram(flat[part]), p.XT[flat[part]], Y[part]
        lam = tc.zeroshot_support_performance(S, Yp, p.scale) if constraint == "clap" else None
        a, B = tc.cosine_lp(G, S, Yp, p.scale, lam, steps)
        norm = tc.cosine_norms(a, B, G, S)
        for g in _groups(part, n, p.Q.shape[0]):
            j = slice(g.start - part.start, g.stop - part.start)
            dots = np.matmul(B[j], p.support_rows(flat[g]), out=logits[g])  # [e, C, q]
            dots += a[j][:, :, None] * p.QtT
            dots *= p.scale
            dots /= norm[j][:, :, None]
    _each_chunk(work, E, n, p, threads)
    return logits


def _tip_keys(p: _Prepared, flat, Y, steps: int, threads: int) -> np.ndarray:
    """Tip-Adapter-F's trained keys as coefficients over the support rows, ``I + Mᵀ`` [E, n, n]
    (each episode with its own step size, as the estimator)."""
    E, n = flat.shape
    keys = np.empty((E, n, n), dtype=p.Xn.dtype)

    def work(part):
        G = p.gram(flat[part])
        lr = tc.TIP_F_LR * n / tc.lambda_max(G)
        keys[part] = tc.tip_finetune(G, p.XT[flat[part]], Y[part], p.scale, 1.0, 1.0, steps, lr)
    _each_chunk(work, E, n, p, threads)
    return keys


def _tip(p: _Prepared, idx, finetune: bool, steps: int, chosen: list | None, threads: int):
    flat, Y = p.support(idx)
    vflat = p.val_rows(idx)
    V = p.V[vflat]
    Av = tc.mm(V, p.Xn[flat].transpose(0, 2, 1))
    keys = _tip_keys(p, flat, Y, steps, threads) if finetune else None
    if keys is not None:
        Av = tc.mm(Av, keys)
    b, a, acc = tc.tip_search(Av, V @ p.T.T, p.y_val[vflat], Y, p.scale, TIP_BETAS, TIP_ALPHAS)
    if chosen is not None:
        chosen.extend(zip(b.tolist(), a.tolist(), acc.tolist()))
    b, a = b.astype(p.Xn.dtype), a.astype(p.Xn.dtype)
    logits = np.empty((len(flat), idx.shape[1], p.Q.shape[0]), dtype=p.Xn.dtype)
    Yt = np.ascontiguousarray(Y.transpose(0, 2, 1))

    def work(part):  # one episode's [n, q] affinities at a time, by blocks of test rows
        for e in range(part.start, part.stop):
            for cols in _test_blocks(flat.shape[1], p.Q.shape[0]):
                A = p.support_rows(flat[e], cols)
                if keys is not None:  # trained keys: affinities are unbounded
                    A = np.minimum(tc.scaled_gap(keys[e].T @ A, b[e]), 60.0, out=A)
                else:  # cosines: β (A - 1) <= 0 already, the cap at 60 cannot act
                    A = tc.scaled_gap(A, b[e])
                cache = np.matmul(Yt[e], np.exp(A, out=A))
                cache *= a[e]
                cache += p.scale * p.QtT[:, cols]
                logits[e, :, cols] = cache
    _each_chunk(work, len(flat), 1, p, threads)
    return logits


def _lppp(p: _Prepared, idx, steps: int, threads: int):
    flat, Y = p.support(idx)
    E, n = flat.shape
    logits = np.empty((E, idx.shape[1], p.Q.shape[0]), dtype=p.Xn.dtype)

    def work(part):
        B, b, alpha = tc.lppp(p.gram(flat[part]), p.XT[flat[part]], Y[part], steps)
        for g in _groups(part, n, p.Q.shape[0]):
            j = slice(g.start - part.start, g.stop - part.start)
            out = np.matmul(B[j], p.support_rows(flat[g]), out=logits[g])  # [e, C, q]
            out += b[j][:, :, None]
            out += alpha[j][:, :, None] * p.QtT
    _each_chunk(work, E, n, p, threads)
    return logits


def text_scorer(method: str, X_train, X_test, *, text, logit_scale, X_val=None, y_val=None,
                steps: int | None = None, chosen: list | None = None,
                threads: int | None = None):
    """The batched scorer of one text-aware few-shot method (see the module docstring).

    ``chosen``: a list that Tip-Adapter extends with (β, α, validation accuracy) per episode.
    ``threads``: threads a batch's episodes are spread over (default: the BLAS threads
    available, :func:`~embedcyto.probes._products.available_threads`); results do not depend
    on it.
    """
    threads = available_threads() if threads is None else max(1, int(threads))
    if method in ("textlinear", "clap"):
        constraint = "clap" if method == "clap" else "none"
        run = lambda p, idx: _textlinear(p, idx, constraint, steps or 300, threads)  # noqa
    elif method in ("tipadapter", "tipadapter_f"):
        run = lambda p, idx: _tip(p, idx, method == "tipadapter_f", steps or 20,  # noqa
                                  chosen, threads)
    elif method == "lppp":
        run = lambda p, idx: _lppp(p, idx, steps or 300, threads)  # noqa: E731
    else:
        raise ProbeError(f"{method!r} is not a few-shot text method; choose one of "
                         f"{', '.join(TEXT_METHODS[1:])}")
    p = _prepared(X_train, X_test, text, logit_scale, X_val, y_val)

    def score(idx: np.ndarray) -> np.ndarray:
        # Hundreds of small products per episode: one BLAS thread per product was measured 30x
        # faster than two on a busy 2-core machine (thread hand-offs dominate), so the
        # parallelism is over episodes instead (see _each_chunk).
        with single_blas_thread():
            logits = run(p, np.asarray(idx))  # [E, C, q]
        return np.negative(logits.transpose(2, 0, 1), out=np.empty(
            logits.shape[2:] + logits.shape[:2], dtype=logits.dtype))
    return score


# Scorers by method, in the form the episode runner calls: scorer(X_train, X_test, **options).
def textlinear_scorer(X_train, X_test, **options):
    return text_scorer("textlinear", X_train, X_test, **options)


def clap_scorer(X_train, X_test, **options):
    return text_scorer("clap", X_train, X_test, **options)


def tipadapter_scorer(X_train, X_test, **options):
    return text_scorer("tipadapter", X_train, X_test, **options)


def tipadapter_f_scorer(X_train, X_test, **options):
    return text_scorer("tipadapter_f", X_train, X_test, **options)


def lppp_scorer(X_train, X_test, **options):
    return text_scorer("lppp", X_train, X_test, **options)
