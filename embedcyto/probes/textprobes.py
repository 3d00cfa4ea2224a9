"""Probes that use the class text embeddings of a vision-language model, on cached features.

* :class:`ZeroShot` — cosine to the prompt-ensembled class embeddings, times the model's logit
  scale; no training data (CLIP's zero-shot classifier).
* :class:`TextLinear` — a cosine linear probe whose prototypes start at the text classifier
  (ZS-LP), and with ``constraint="clap"`` a class-adaptive penalty keeping them near it (CLAP,
  Silva-Rodríguez et al., CVPR 2024).
* :class:`TipAdapter` — Tip-Adapter (Zhang et al., ECCV 2022): zero-shot logits plus a key-value
  cache of the support set; ``finetune=True`` trains the keys (Tip-Adapter-F). β and α are
  chosen on the validation rows given to ``fit`` (never on test rows).
* :class:`LPPP` — LP++ (Huang et al., CVPR 2024): a linear probe plus class-wise multipliers of
  the text logits.

``text`` is the [n_text_classes, dim] class embedding matrix of the store (row i = label i), so
integer labels index it; without ``text`` (e.g. scikit-learn's generic checks), the support
class means stand in for the text embeddings. Features and text rows are L2-normalised inside.
The arithmetic is :mod:`embedcyto.probes.textcore`, shared with the batched episode scorers.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from embedcyto.probes import textcore as tc
from embedcyto.probes._base import l2_normalise
from embedcyto.probes._multinomial import single_blas_thread
from embedcyto.probes._sk import (
    ProbeInputError,
    require_two_classes,
    validate_fit,
    validate_predict,
    validate_val,
)

TIP_BETAS = tuple(round(0.1 + i * (7 - 0.1) / 20, 4) for i in range(20))
TIP_ALPHAS = tuple(round(0.1 + i * (3 - 0.1) / 10, 4) for i in range(10))


def one_hot(y: np.ndarray, n: int, dtype=np.float64) -> np.ndarray:
    out = np.zeros((len(y), n), dtype=dtype)
    out[np.arange(len(y)), y] = 1.0
    return out


class _TextProbe(ClassifierMixin, BaseEstimator):
    """Shared input handling; subclasses implement ``_fit`` and ``_logits`` (batched, E = 1)."""

    def _text(self, F: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.text is None:
            return l2_normalise(tc_class_means(F, y, len(self.classes_)))
        T = np.asarray(self.text, dtype=F.dtype)
        if T.ndim != 2 or T.shape[1] != F.shape[1]:
            raise ProbeInputError(f"text must be (n_classes, {F.shape[1]}), got {T.shape}")
        if not np.issubdtype(self.classes_.dtype, np.integer) or self.classes_.min() < 0 \
                or self.classes_.max() >= len(T):
            raise ProbeInputError("with text embeddings, labels must be integers indexing its "
                                  f"{len(T)} rows")
        return l2_normalise(T[self.classes_.astype(int)])

    def _check_scale(self):
        if not np.isfinite(self.logit_scale) or self.logit_scale <= 0:
            raise ProbeInputError(f"logit_scale must be positive, got {self.logit_scale!r}")

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit on the support rows (X, y); validation rows only where the method selects."""
        X, yy = validate_fit(self, X, y)
        require_two_classes(self)
        self._check_scale()
        X_val, y_val = validate_val(self, X_val, y_val)
        F = l2_normalise(X)
        self.text_ = self._text(F, yy)
        self.support_ = F
        Y = one_hot(yy, len(self.classes_), F.dtype)
        with single_blas_thread():  # see text_episodes.text_scorer
            self._fit(F[None], (F @ F.T)[None], (F @ self.text_.T)[None], Y[None], X_val, y_val)
        return self

    def _scores(self, X) -> np.ndarray:
        X = validate_predict(self, X)
        Q = l2_normalise(X)
        return self._logits((Q @ self.support_.T)[None], Q @ self.text_.T)[0]

    def predict_proba(self, X) -> np.ndarray:
        return tc.softmax(self._scores(X))

    def logits(self, X) -> np.ndarray:
        """The method's class scores [n, n_classes] (softmax gives predict_proba)."""
        return self._scores(X)

    def predict(self, X) -> np.ndarray:
        scores = self._scores(X)
        return self.classes_[np.argmax(scores, axis=1)]


def tc_class_means(F, y, n):
    sums = np.zeros((n, F.shape[1]), dtype=F.dtype)
    np.add.at(sums, y, F)
    return sums / np.maximum(np.bincount(y, minlength=n), 1)[:, None]


class ZeroShot(_TextProbe):
    """CLIP's zero-shot classifier: ``logit_scale · cos(image, class text)``. ``fit`` only
    records the classes (labels index ``text`` rows); no training row changes the result."""

    def __init__(self, text=None, logit_scale=100.0):
        self.text = text
        self.logit_scale = logit_scale

    def fit(self, X, y, X_val=None, y_val=None):
        if self.text is None:
            raise ProbeInputError("zero-shot classification needs the class text embeddings")
        return super().fit(X, y)

    def _fit(self, *args):
        pass

    def _logits(self, A, Qt):
        return self.logit_scale * Qt[None]


class TextLinear(_TextProbe):
    """Cosine linear probe started at the text classifier (ZS-LP); ``constraint="clap"`` adds
    CLAP's class-adaptive penalty ``mean_c λ_c |w_c - t_c|²`` with λ_c the zero-shot
    probability of class c's own support rows."""

    def __init__(self, text=None, logit_scale=100.0, constraint="none", steps=300):
        self.text = text
        self.logit_scale = logit_scale
        self.constraint = constraint
        self.steps = steps

    def _fit(self, F, G, S, Y, X_val, y_val):
        if self.constraint not in ("none", "clap"):
            raise ProbeInputError(f"constraint must be 'none' or 'clap', got {self.constraint!r}")
        lam = tc.zeroshot_support_performance(S, Y, self.logit_scale) \
            if self.constraint == "clap" else None
        self.lambda_ = None if lam is None else lam[0]
        self.a_, self.B_ = tc.cosine_lp(G, S, Y, self.logit_scale, lam, int(self.steps))
        self.G_, self.S_ = G, S

    def _logits(self, A, Qt):
        return tc.cosine_lp_logits(self.a_, self.B_, A, Qt, self.G_, self.S_, self.logit_scale)


class TipAdapter(_TextProbe):
    """Tip-Adapter: ``logit_scale · cos(f, T) + α · exp(-β (1 - f Kᵀ)) L`` with the support
    features as keys K and their one-hot labels as values L. β, α are searched on the
    validation rows (official grid form, ``TIP_BETAS`` × ``TIP_ALPHAS``), else 1 and 1.
    ``finetune=True`` (Tip-Adapter-F) first trains the keys on the support set."""

    def __init__(self, text=None, logit_scale=100.0, finetune=False, steps=20,
                 betas=TIP_BETAS, alphas=TIP_ALPHAS):
        self.text = text
        self.logit_scale = logit_scale
        self.finetune = finetune
        self.steps = steps
        self.betas = betas
        self.alphas = alphas

    def _fit(self, F, G, S, Y, X_val, y_val):
        self.L_ = Y
        n = G.shape[1]
        self.keys_ = np.eye(n, dtype=G.dtype)[None]  # (I + M)ᵀ: the keys are (I + M) F
        if self.finetune:
            lr = float(tc.TIP_F_LR * n / tc.lambda_max(G)[0])
            self.keys_ = tc.tip_finetune(G, S, Y, self.logit_scale, 1.0, 1.0, int(self.steps), lr)
        if X_val is None:
            self.beta_, self.alpha_, self.val_accuracy_ = 1.0, 1.0, None
            return
        V = l2_normalise(X_val)
        Av = (V @ F[0].T)[None] @ self.keys_
        b, a, acc = tc.tip_search(Av, (V @ self.text_.T)[None], y_val[None], Y,
                                  self.logit_scale, self.betas, self.alphas)
        self.beta_, self.alpha_, self.val_accuracy_ = float(b[0]), float(a[0]), float(acc[0])

    def _logits(self, A, Qt):
        keys = A @ self.keys_
        return self.logit_scale * Qt[None] + self.alpha_ * tc.tip_cache_logits(
            keys, self.L_, self.beta_)


class LPPP(_TextProbe):
    """LP++: ``f Wᵀ + b + α ⊙ (f Tᵀ)``, W from the support class means, α per class; the
    step sizes come from the data (no validation search). ``logit_scale`` is not used: LP++
    learns its own scale through W and α."""

    def __init__(self, text=None, logit_scale=100.0, steps=300):
        self.text = text
        self.logit_scale = logit_scale
        self.steps = steps

    def _fit(self, F, G, S, Y, X_val, y_val):
        self.B_, self.b_, self.alpha_ = tc.lppp(G, S, Y, int(self.steps))

    def _logits(self, A, Qt):
        return tc.lppp_logits(self.B_, self.b_, self.alpha_, A, Qt[None])


class CLAP(TextLinear):
    """:class:`TextLinear` with CLAP's class-adaptive constraint on by default (the ``clap``
    row of the probe registry)."""

    def __init__(self, text=None, logit_scale=100.0, constraint="clap", steps=300):
        super().__init__(text=text, logit_scale=logit_scale, constraint=constraint, steps=steps)


class TipAdapterF(TipAdapter):
    """:class:`TipAdapter` with trained cache keys by default (the ``tipadapter_f`` row)."""

    def __init__(self, text=None, logit_scale=100.0, finetune=True, steps=20,
                 betas=TIP_BETAS, alphas=TIP_ALPHAS):
        super().__init__(text=text, logit_scale=logit_scale, finetune=finetune, steps=steps,
                         betas=betas, alphas=alphas)
