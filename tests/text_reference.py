"""Test helper: a straightforward reference of the text-aware episode scorers.

The arithmetic as first written (weights held as [C, n] coefficients, allocating every
intermediate, one β of the Tip-Adapter grid at a time from the raw affinities), run on ONE
episode at a time from plain products of that episode's rows. The batched scorers of
``embedcyto.probes.text_episodes`` (chunked, in place, evaluated per episode against a shared
test x train product) must give the same logits up to float rounding and the same predictions.
"""

from __future__ import annotations

import hashlib

import numpy as np

from embedcyto.probes._base import l2_normalise
# The shared primitives (batched product, softmax, power iteration, Tip-Adapter's cache
# logits) are the library's own: the reference re-derives the batched, chunked, in-place
# arithmetic built on them, not the primitives.
from embedcyto.probes.textcore import lambda_max, mm, softmax, tip_cache_logits
from embedcyto.probes.textprobes import TIP_ALPHAS, TIP_BETAS

TIP_F_LR = 0.05


def tip_search(Av: np.ndarray, Vt: np.ndarray, yv: np.ndarray, L: np.ndarray, scale: float,
               betas, alphas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid search of (β, α) on validation rows, per episode.

    Av [E, m, n] validation-cache affinities, Vt [E, m, C] validation-text cosines, yv [E, m]
    labels. Returns (β [E], α [E], validation accuracy [E]); ties go to the first (β, α) of the
    grid, i.e. the smallest β then the smallest α, as in the official search.
    """
    E = Av.shape[0]
    best = np.full(E, -1.0)
    best_b = np.zeros(E)
    best_a = np.zeros(E)
    zs = scale * Vt
    for b in betas:
        cache = tip_cache_logits(Av, L, b)
        for a in alphas:
            acc = ((zs + a * cache).argmax(axis=2) == yv).mean(axis=1)
            better = acc > best
            best = np.where(better, acc, best)
            best_b = np.where(better, b, best_b)
            best_a = np.where(better, a, best_a)
    return best_b, best_a, best





def tip_finetune(G: np.ndarray, St: np.ndarray, L: np.ndarray, scale: float, alpha: float,
                 beta: float, steps: int, lr: float, momentum: float = 0.9) -> np.ndarray:
    """Tip-Adapter-F: the cache keys become parameters, trained with cross-entropy on the
    support set (the cache itself). Keys ``K = (I + M) F``; returns M [E, n, n].

    Full-batch gradient descent with momentum on the keys (the official code uses AdamW on
    augmented views; see docs/probes.md).
    """
    E, n, _ = G.shape
    eye = np.eye(n, dtype=G.dtype)
    M = np.zeros_like(G)
    vel = np.zeros_like(G)
    zs = scale * St
    for _ in range(steps):
        A = mm(G, (eye + M).transpose(0, 2, 1))  # support-key affinities [E, n(rows), n(keys)]
        expo = np.exp(np.minimum(-beta * (1.0 - A), 60.0))
        P = softmax(zs + alpha * mm(expo, L))
        R = (P - L) / n  # dLoss/dlogits, L doubles as the support one-hot
        dA = alpha * beta * expo * mm(R, L.transpose(0, 2, 1))  # dLoss/dA [E, rows, keys]
        grad = dA.transpose(0, 2, 1)  # keys' gradient = dAᵀ F  -> coefficients over F
        vel = momentum * vel + grad
        M = M - lr * vel
    return M



def cosine_lp(G, S, Y, scale: float, lam: np.ndarray | None, steps: int, momentum: float = 0.9):
    """Prototypes ``w_c = a_c t_c + Σ_i B_ci f_i`` (start: a = 1, B = 0, the zero-shot classifier)
    trained by full-batch gradient descent with momentum on
    ``CE(scale · cos(f, w)) + mean_c lam_c |w_c - t_c|²`` (lam None: no constraint).

    G [E,n,n], S [E,n,C] support-text cosines, Y [E,n,C] one-hot. Step size 1 / (scale² λmax(G)
    / (2n) + 2 max lam / C) from the Lipschitz bound of the loss. Returns (a [E,C], B [E,C,n]).
    """
    E, n, C = S.shape
    a = np.ones((E, C), dtype=G.dtype)
    B = np.zeros((E, C, n), dtype=G.dtype)
    va, vB = np.zeros_like(a), np.zeros_like(B)
    lam = np.zeros((E, C), dtype=G.dtype) if lam is None else lam
    lr = 1.0 / (scale ** 2 * lambda_max(G) / (2 * n) + 2 * lam.max(axis=1) / C)
    lr = lr[:, None]
    for _ in range(steps):
        GB = mm(B, G)  # [E, C, n]: (G b_c) per class
        dots = a[:, None, :] * S + GB.transpose(0, 2, 1)  # f_j · w_c   [E, n, C]
        sq = a * a + 2 * a * (B * S.transpose(0, 2, 1)).sum(axis=2) + (B * GB).sum(axis=2)
        norm = np.sqrt(np.maximum(sq, 1e-12))
        cos = dots / norm[:, None, :]
        R = (softmax(scale * cos) - Y) / n  # [E, n, C]
        # d/dw_c of CE = scale/|w_c| (Σ_j R_jc f_j - ŵ_c Σ_j R_jc cos_jc)
        k = scale / norm  # [E, C]
        shrink = k * (R * cos).sum(axis=1) / norm  # coefficient on w_c itself
        gB = k[..., None] * R.transpose(0, 2, 1) - shrink[..., None] * B
        ga = -shrink * a
        # constraint: 2 lam_c / C (w_c - t_c)
        gB += (2 * lam / C)[..., None] * B
        ga += 2 * lam / C * (a - 1.0)
        va, vB = momentum * va + ga, momentum * vB + gB
        a, B = a - lr * va, B - lr[..., None] * vB
    return a, B


def cosine_lp_logits(a, B, A, Qt, G, S, scale: float) -> np.ndarray:
    """Query logits [E, q, C] of :func:`cosine_lp`'s prototypes (A [E,q,n], Qt [q,C] or
    [E,q,C])."""
    GB = mm(B, G)
    sq = a * a + 2 * a * (B * S.transpose(0, 2, 1)).sum(axis=2) + (B * GB).sum(axis=2)
    dots = a[:, None, :] * Qt + mm(A, B.transpose(0, 2, 1))
    return scale * dots / np.sqrt(np.maximum(sq, 1e-12))[:, None, :]


def zeroshot_support_performance(S, Y, scale: float) -> np.ndarray:
    """CLAP's class-adaptive multipliers: per class, the mean zero-shot probability of the true
    class over that class's support rows [E, C]."""
    P = softmax(scale * S)
    return (P * Y).sum(axis=1) / np.maximum(Y.sum(axis=1), 1)



def lppp(G, S, Y, steps: int = 300, alpha_every: int = 10, momentum: float = 0.9):
    """LP++: logits ``f Wᵀ + b + α ⊙ (f Tᵀ)`` with W = B F (start: the support class means),
    b = 0, α (per class) = 250 · mean_c (mean over class c's rows of f·t_c). W and b by
    full-batch SGD with momentum 0.9 and step 4n / λmax(FᵀF); α by a gradient step of size
    n / (4 max_c Σ_i (f_i·t_c)²) every ``alpha_every`` steps. Returns (B [E,C,n], b [E,C],
    α [E,C])."""
    E, n, C = S.shape
    counts = np.maximum(Y.sum(axis=1), 1)  # [E, C]
    B = Y.transpose(0, 2, 1) / counts[..., None]
    b = np.zeros((E, C), dtype=G.dtype)
    own = (S * Y).sum(axis=1) / counts  # mean_{i in c} f_i · t_c
    alpha = np.repeat(250.0 * own.mean(axis=1, keepdims=True), C, axis=1).astype(G.dtype)
    lr_w = (4 * n / lambda_max(G))[:, None]
    lr_a = (n / (4 * (S * S).sum(axis=1).max(axis=1)))[:, None]
    vB, vb = np.zeros_like(B), np.zeros_like(b)
    for step in range(steps):
        logits = mm(B, G).transpose(0, 2, 1) + b[:, None, :] + alpha[:, None, :] * S
        R = (softmax(logits) - Y) / n
        vB = momentum * vB + R.transpose(0, 2, 1)
        vb = momentum * vb + R.sum(axis=1)
        B = B - lr_w[..., None] * vB
        b = b - lr_w * vb
        if (step + 1) % alpha_every == 0:
            alpha = alpha - lr_a * (R * S).sum(axis=1)
    return B, b, alpha


def lppp_logits(B, b, alpha, A, Qt) -> np.ndarray:
    return mm(A, B.transpose(0, 2, 1)) + b[:, None, :] + alpha[:, None, :] * Qt


def val_rows(idx_e: np.ndarray, y_val: np.ndarray) -> np.ndarray:
    """The episode's K validation rows per class, drawn as the scorer documents."""
    C, K = idx_e.shape
    seed = int.from_bytes(hashlib.sha256(idx_e.tobytes()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(y_val == c) for c in range(C)]
    return np.concatenate([rng.choice(p, K, replace=len(p) < K) for p in pools])


def reference_scores(method, X, Xt, T, scale, idx, X_val=None, y_val=None, steps=None,
                     chosen=None) -> np.ndarray:
    """Negative logits [n_test, E, C] of ``method`` on episodes ``idx`` [E, C, K], one episode
    at a time (the scorer's layout)."""
    dtype = np.float32 if X.dtype != np.float64 else np.float64
    Xn, Q, Tn = (l2_normalise(np.asarray(a, dtype=dtype)) for a in (X, Xt, T))
    E, C, K = idx.shape
    out = np.empty((len(Q), E, C), dtype=dtype)
    for e in range(E):
        rows = idx[e].reshape(-1)
        F = Xn[rows]
        Y = np.repeat(np.eye(C, dtype=dtype), K, axis=0)[None]
        G, S, A, Qt = (F @ F.T)[None], (F @ Tn.T)[None], (Q @ F.T)[None], Q @ Tn.T
        if method in ("textlinear", "clap"):
            lam = zeroshot_support_performance(S, Y, scale) if method == "clap" else None
            a, B = cosine_lp(G, S, Y, scale, lam, steps or 300)
            logits = cosine_lp_logits(a, B, A, Qt, G, S, scale)[0]
        elif method == "lppp":
            B, b, alpha = lppp(G, S, Y, steps or 300)
            logits = (mm(A, B.transpose(0, 2, 1)) + b[:, None, :] + alpha[:, None, :] * Qt)[0]
        else:
            V = l2_normalise(np.asarray(X_val, dtype=dtype))[val_rows(idx[e], y_val)]
            n = len(rows)
            keys = np.eye(n, dtype=dtype)[None]
            if method == "tipadapter_f":
                lr = float(TIP_F_LR * n / lambda_max(G)[0])
                M = tip_finetune(G, S, Y, scale, 1.0, 1.0, steps or 20, lr)
                keys = keys + M.transpose(0, 2, 1)
            Av = (V @ F.T)[None] @ keys
            yv = np.asarray(y_val)[val_rows(idx[e], y_val)]
            b, al, acc = tip_search(Av, (V @ Tn.T)[None], yv[None], Y, scale, TIP_BETAS,
                                    TIP_ALPHAS)
            if chosen is not None:
                chosen.append((float(b[0]), float(al[0]), float(acc[0])))
            b, al = np.asarray(b, dtype=dtype), np.asarray(al, dtype=dtype)
            logits = scale * Qt + al[0] * tip_cache_logits(A @ keys, Y, b[0])[0]
        out[:, e] = -logits
    return out
