"""The arithmetic of the text-aware probes, batched over few-shot episodes (leading axis E).

Every method here learns weights that are, by construction, combinations of the support
features and the class text embeddings: plain (momentum) gradient descent on a linear or cosine
classifier of the support features never leaves that span. So each method is written on
inner products only — the support Gram matrix ``G = F Fᵀ`` [E, n, n], support-text products
``S = F Tᵀ`` [E, n, C], query-support products ``A = Q Fᵀ`` [E, q, n] and query-text products
``Qt = Q Tᵀ`` [q, C] — and a weight vector is held as coefficients over ``F`` (and ``T``). With
n = C·K support rows this costs O(n² C) per step instead of O(n d C), and the query products of
every episode are gathered from one ``Q X_trainᵀ`` computed once. All rows (features, text) are
L2-normalised by the callers. docs/probes.md gives the equations and their sources.
"""

from __future__ import annotations

import numpy as np


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched matrix product, one BLAS call per episode: numpy's stacked ``matmul`` was
    measured 20x slower than this loop for [16, 23, 368] @ [16, 368, 368] float32."""
    if a.ndim == 2 or b.ndim == 2:
        return a @ b
    out = np.empty(a.shape[:-1] + b.shape[-1:], dtype=np.result_type(a, b))
    for e in range(max(a.shape[0], b.shape[0])):
        out[e] = a[e if a.shape[0] > 1 else 0] @ b[e if b.shape[0] > 1 else 0]
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def softmax_(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """:func:`softmax` over ``axis``, in place (``z`` is overwritten and returned). The
    training loops keep classes on axis 1 of [E, C, n] arrays: reducing over C = 23 contiguous
    values per row was measured 10x slower than reducing across the C rows."""
    z -= z.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def lambda_max(G: np.ndarray, iters: int = 50) -> np.ndarray:
    """Largest eigenvalue of each symmetric PSD ``G`` [E, n, n] (power iteration, from above
    by a 1 % margin so that step sizes derived from it stay safe)."""
    v = np.ones(G.shape[:2] + (1,), dtype=G.dtype)
    lam = np.ones(G.shape[0], dtype=G.dtype)
    for _ in range(iters):
        w = mm(G, v)
        lam = np.linalg.norm(w[..., 0], axis=1)
        v = w / np.maximum(lam, 1e-30)[:, None, None]
    return np.maximum(lam * 1.01, 1e-12)


# ---- Tip-Adapter (Zhang et al., ECCV 2022) --------------------------------------------------

def tip_cache_logits(A: np.ndarray, L: np.ndarray, beta) -> np.ndarray:
    """``exp(-β (1 - A)) L``: A [E, q, n] affinities to the cache keys, L [E, n, C] one-hot
    values; β a scalar or per-episode [E]."""
    beta = np.asarray(beta, dtype=A.dtype).reshape(-1, 1, 1)
    return mm(np.exp(np.minimum(-beta * (1.0 - A), 60.0)), L)


def scaled_gap(A: np.ndarray, beta) -> np.ndarray:
    """``-β (1 - A)`` in place, as ``β (A - 1)`` (the same floats: rounding is symmetric in
    sign), with the multiplication skipped at β = 1."""
    np.subtract(A, 1.0, out=A)
    if np.any(np.asarray(beta) != 1.0):
        np.multiply(A, beta, out=A)
    return A


def tip_search(Av: np.ndarray, Vt: np.ndarray, yv: np.ndarray, L: np.ndarray, scale: float,
               betas, alphas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid search of (β, α) on validation rows, per episode.

    Av [E, m, n] validation-cache affinities, Vt [E, m, C] validation-text cosines, yv [E, m]
    labels. Returns (β [E], α [E], validation accuracy [E]); ties go to the first
    (β, α) of the grid, i.e. the smallest β then the smallest α, as in the official search.
    ``1 - Av`` is formed once for the whole grid; each β then costs one scaled exp and one
    product (values as :func:`tip_cache_logits` computes them; the cap at 60 is applied only
    when some affinity could reach it).
    """
    E = Av.shape[0]
    best = np.full(E, -1.0)
    best_b = np.zeros(E)
    best_a = np.zeros(E)
    zs = scale * Vt
    gap = 1.0 - Av
    capped = -max(betas) * float(gap.min()) > 59.0  # else the cap at 60 cannot act
    expo = np.empty_like(Av)
    for b in betas:
        np.multiply(-np.asarray(b, dtype=Av.dtype), gap, out=expo)
        if capped:
            np.minimum(expo, 60.0, out=expo)
        cache = mm(np.exp(expo, out=expo), L)
        # every α at once: [n_alphas, E, m, C] logits, one argmax
        grid = zs + np.asarray(alphas, dtype=cache.dtype)[:, None, None, None] * cache
        accs = (grid.argmax(axis=3) == yv).mean(axis=2)
        for a, acc in zip(alphas, accs):
            better = acc > best
            best = np.where(better, acc, best)
            best_b = np.where(better, b, best_b)
            best_a = np.where(better, a, best_a)
    return best_b, best_a, best


#: Tip-Adapter-F step size, as a fraction of n / λmax(FᵀF): small enough that the affinities
#: stay O(1) (at 0.5 and above they grew past 6 and test accuracy fell on noisy features).
TIP_F_LR = 0.05


def tip_finetune(G: np.ndarray, St: np.ndarray, L: np.ndarray, scale: float, alpha: float,
                 beta: float, steps: int, lr, momentum: float = 0.9) -> np.ndarray:
    """Tip-Adapter-F: the cache keys become parameters, trained with cross-entropy on the
    support set (the cache itself). Keys ``K = (I + M) F``; returns ``(I + M)ᵀ`` [E, n, n] (the
    affinities of rows X to the keys are ``X Fᵀ (I + M)ᵀ``). ``lr`` is a scalar or one step size
    per episode [E].

    Full-batch gradient descent with momentum on the keys (the official code uses AdamW on
    augmented views; see docs/probes.md). Held transposed, so every pass is contiguous, with
    the step size folded into the velocity (``lr · vel``) and into the [n, C] residuals; the
    first step skips its product (M = 0).
    """
    E, n, _ = G.shape
    rate = np.asarray(lr, dtype=G.dtype).reshape(-1, 1, 1) * (alpha * beta / n)
    keys = np.broadcast_to(np.eye(n, dtype=G.dtype), G.shape).copy()  # (I + M)ᵀ
    step_t, A = np.zeros_like(G), np.empty_like(G)  # lr · velᵀ, affinities
    label = L.argmax(axis=2)  # [E, n]
    zs = scale * St
    for step in range(steps):
        if step == 0:
            A[...] = G  # G (I + 0)ᵀ: the product would give G exactly
        else:
            np.matmul(G, keys, out=A)  # support-key affinities G (I + M)ᵀ
        expo = np.exp(np.minimum(scaled_gap(A, beta), 60.0, out=A), out=A)
        P = softmax_(zs + alpha * mm(expo, L))
        R = (P - L) * rate  # lr α β dLoss/dlogits, L doubles as the support one-hot
        dA = _times_by_key(expo, R, label)  # lr · dLoss/dA [E, rows, keys]
        step_t *= momentum
        step_t += dA  # keys' gradient = dAᵀ F  -> coefficients over F
        keys -= step_t
    return keys


def _times_by_key(expo: np.ndarray, R: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``expo ⊙ (R Lᵀ)`` in place, for one-hot L: each key j's column of expo times column c(j)
    of R (``R Lᵀ`` has a single non-zero term per entry, so this is exact). Keys in class
    blocks of K, as the episode scorer orders them, need no gathered copy."""
    E, n, C = R.shape
    first = label[0]
    if (label == first).all():  # the episodes' keys share one label order
        if n % C == 0 and (first == np.repeat(np.arange(C), n // C)).all():
            expo.reshape(E, n, C, n // C)[...] *= R[:, :, :, None]
            return expo
        return np.multiply(expo, R[:, :, first], out=expo)
    by_key = np.take_along_axis(R, np.broadcast_to(label[:, None, :], (E, n, n)), axis=2)
    return np.multiply(expo, by_key, out=expo)


# ---- cosine linear probe initialised at the text classifier (CLAP's ZS-LP / CLAP) -----------

def cosine_lp(G, S, Y, scale: float, lam: np.ndarray | None, steps: int, momentum: float = 0.9):
    """Prototypes ``w_c = a_c t_c + Σ_i B_ci f_i`` (start: a = 1, B = 0, the zero-shot classifier)
    trained by full-batch gradient descent with momentum on
    ``CE(scale · cos(f, w)) + mean_c lam_c |w_c - t_c|²`` (lam None: no constraint).

    G [E,n,n], S [E,n,C] support-text cosines, Y [E,n,C] one-hot. Step size 1 / (scale² λmax(G)
    / (2n) + 2 max lam / C) from the Lipschitz bound of the loss. Returns (a [E,C], B [E,C,n]).
    Each step is one product with G and a few in-place passes over [E, C, n] buffers.
    """
    E, n, C = S.shape
    St, Yt = np.ascontiguousarray(S.transpose(0, 2, 1)), np.ascontiguousarray(Y.transpose(0, 2, 1))
    a = np.ones((E, C), dtype=G.dtype)
    B, vB = np.zeros_like(St), np.zeros_like(St)
    va = np.zeros_like(a)
    lam = np.zeros((E, C), dtype=G.dtype) if lam is None else lam
    lr = 1.0 / (scale ** 2 * lambda_max(G) / (2 * n) + 2 * lam.max(axis=1) / C)
    lr, reg = lr[:, None], 2 * lam / C
    GB, u, z = np.empty_like(St), np.empty_like(St), np.empty_like(St)
    for _ in range(steps):
        np.matmul(B, G, out=GB)  # (G b_c) per class
        norm = np.sqrt(np.maximum(a * a + 2 * a * np.vecdot(B, St) + np.vecdot(B, GB), 1e-12))
        np.multiply(St, a[:, :, None], out=u)
        u += GB  # f_j · w_c   [E, C, n]
        k = scale / norm  # [E, C]
        R = softmax_(np.multiply(u, k[:, :, None], out=z), axis=1)  # softmax(scale · cos)
        R -= Yt
        R /= n  # dLoss/dlogits [E, C, n]
        # d/dw_c of CE = scale/|w_c| (Σ_j R_jc f_j - ŵ_c Σ_j R_jc cos_jc); the constraint adds
        # 2 lam_c / C (w_c - t_c)
        shrink = k * np.vecdot(R, u) / norm / norm  # coefficient on w_c itself
        va = momentum * va + (reg * (a - 1.0) - shrink * a)
        vB *= momentum
        vB += np.multiply(R, k[:, :, None], out=R)
        vB += np.multiply(B, (reg - shrink)[:, :, None], out=u)
        a = a - lr * va
        B -= np.multiply(vB, lr[:, :, None], out=u)
    return a, B


def cosine_norms(a, B, G, S) -> np.ndarray:
    """|w_c| [E, C] of :func:`cosine_lp`'s prototypes (S [E, n, C])."""
    sq = a * a + 2 * a * np.vecdot(B, S.transpose(0, 2, 1)) + np.vecdot(B, mm(B, G))
    return np.sqrt(np.maximum(sq, 1e-12))


def cosine_lp_logits(a, B, A, Qt, G, S, scale: float) -> np.ndarray:
    """Query logits [E, q, C] of :func:`cosine_lp`'s prototypes (A [E,q,n], Qt [q,C] or
    [E,q,C])."""
    dots = a[:, None, :] * Qt + mm(A, B.transpose(0, 2, 1))
    return scale * dots / cosine_norms(a, B, G, S)[:, None, :]


def zeroshot_support_performance(S, Y, scale: float) -> np.ndarray:
    """CLAP's class-adaptive multipliers: per class, the mean zero-shot probability of the true
    class over that class's support rows [E, C]."""
    P = softmax(scale * S)
    return (P * Y).sum(axis=1) / np.maximum(Y.sum(axis=1), 1)


# ---- LP++ (Huang et al., CVPR 2024) ----------------------------------------------------------

def lppp(G, S, Y, steps: int = 300, alpha_every: int = 10, momentum: float = 0.9):
    """LP++: logits ``f Wᵀ + b + α ⊙ (f Tᵀ)`` with W = B F (start: the support class means),
    b = 0, α (per class) = 250 · mean_c (mean over class c's rows of f·t_c). W and b by
    full-batch SGD with momentum 0.9 and step 4n / λmax(FᵀF); α by a gradient step of size
    n / (4 max_c Σ_i (f_i·t_c)²) every ``alpha_every`` steps. Returns (B [E,C,n], b [E,C],
    α [E,C]); the [E, C, n] arrays are updated in place."""
    E, n, C = S.shape
    St, Yt = np.ascontiguousarray(S.transpose(0, 2, 1)), np.ascontiguousarray(Y.transpose(0, 2, 1))
    counts = np.maximum(Y.sum(axis=1), 1)  # [E, C]
    B = Yt / counts[..., None]
    b = np.zeros((E, C), dtype=G.dtype)
    own = (S * Y).sum(axis=1) / counts  # mean_{i in c} f_i · t_c
    alpha = np.repeat(250.0 * own.mean(axis=1, keepdims=True), C, axis=1).astype(G.dtype)
    lr_w = (4 * n / lambda_max(G))[:, None]
    lr_a = (n / (4 * (S * S).sum(axis=1).max(axis=1)))[:, None]
    vB, vb = np.zeros_like(B), np.zeros_like(b)
    R, tmp = np.empty_like(B), np.empty_like(B)
    for step in range(steps):
        np.matmul(B, G, out=R)
        R += b[:, :, None]
        R += np.multiply(St, alpha[:, :, None], out=tmp)
        R = softmax_(R, axis=1)
        R -= Yt
        R /= n
        vB *= momentum
        vB += R
        vb = momentum * vb + R.sum(axis=2)
        B -= np.multiply(vB, lr_w[..., None], out=tmp)
        b = b - lr_w * vb
        if (step + 1) % alpha_every == 0:
            alpha = alpha - lr_a * np.vecdot(R, St)
    return B, b, alpha


def lppp_logits(B, b, alpha, A, Qt) -> np.ndarray:
    return mm(A, B.transpose(0, 2, 1)) + b[:, None, :] + alpha[:, None, :] * Qt
