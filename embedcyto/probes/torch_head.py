"""The study's linear head: a torch linear layer trained with AdamW on cached embeddings.

Dausort et al. train their "linear probe" as a linear layer with AdamW rather than a convex
logistic regression. :class:`StudyLinearHead` reproduces that recipe so its numbers can be compared
with the paper's; :class:`~embedcyto.probes.linear.LinearProbe` is the better-founded probe.

Recipe: AdamW (lr 1e-3, weight decay 1e-2), batch 32, cross-entropy, learning rate warmed up
linearly over the first 50 optimiser steps then decayed by a cosine to 1e-6 at the last step, a
fixed budget of ``epochs`` passes over the training rows (default 20; no early stopping and no
validation split, so every seed runs the same number of steps). Seeds (the study uses 1, 2, 3)
drive the weight initialisation and the batch order through a private ``torch.Generator``; the
global torch RNG is never touched. torch is imported inside ``fit`` so that importing the probes
costs nothing.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from embedcyto.errors import ProbeError
from embedcyto.probes._base import apply_normaliser, check_normalisation, fit_normaliser
from embedcyto.probes._sk import softmax, validate_fit, validate_predict
from embedcyto.schedule import warmup_cosine


class StudyLinearHead(ClassifierMixin, BaseEstimator):
    """Linear classifier trained by AdamW with warm-up + cosine schedule (the study's protocol).

    Args:
        epochs: passes over the training rows (fixed budget).
        lr, weight_decay, batch_size, warmup_steps, min_lr: the optimiser recipe above.
        normalisation: "none" (default, as the study), "standard", "l2" or "center_l2".
        random_state: seed of initialisation and batch order.

    Attributes:
        classes_, n_features_in_, coef_ (n_classes, n_features), intercept_, mean_, scale_,
        n_steps_ (optimiser steps taken), loss_curve_ (mean training loss per epoch).
    """

    def __init__(self, epochs=20, lr=1e-3, weight_decay=1e-2, batch_size=32, warmup_steps=50,
                 min_lr=1e-6, normalisation="none", random_state=1):
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        self.min_lr = min_lr
        self.normalisation = normalisation
        self.random_state = random_state

    def _check_params(self) -> None:
        check_normalisation(self.normalisation)
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ProbeError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ProbeError("lr must be > 0; min_lr, weight_decay and warmup_steps >= 0")

    def fit(self, X, y):
        """Train the head for the fixed budget; returns self."""
        import torch

        self._check_params()
        X, y = validate_fit(self, X, y)
        self.mean_, self.scale_ = fit_normaliser(X, self.normalisation)
        Xt = torch.from_numpy(  # a writable copy when the input is read-only (torch needs one)
            np.require(apply_normaliser(X, self.normalisation, self.mean_, self.scale_),
                       dtype=np.float32, requirements=["C", "W"]))
        yt = torch.from_numpy(y)
        gen = torch.Generator().manual_seed(int(self.random_state or 0))
        n, d = Xt.shape
        k = len(self.classes_)
        bound = 1.0 / math.sqrt(d)  # nn.Linear's default initialisation range
        weight = ((torch.rand(k, d, generator=gen) * 2 - 1) * bound).requires_grad_()
        bias = ((torch.rand(k, generator=gen) * 2 - 1) * bound).requires_grad_()
        opt = torch.optim.AdamW([weight, bias], lr=self.lr, weight_decay=self.weight_decay)
        per_epoch = math.ceil(n / self.batch_size)
        total = per_epoch * int(self.epochs)
        step, self.loss_curve_ = 0, []
        for _ in range(int(self.epochs)):
            order = torch.randperm(n, generator=gen)
            running = 0.0
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                for group in opt.param_groups:
                    group["lr"] = warmup_cosine(step, total, self.lr, self.warmup_steps,
                                                self.min_lr)
                loss = torch.nn.functional.cross_entropy(Xt[idx] @ weight.T + bias, yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += float(loss.detach()) * idx.numel()
                step += 1
            self.loss_curve_.append(running / n)
        self.coef_ = weight.detach().numpy().astype(np.float64)
        self.intercept_ = bias.detach().numpy().astype(np.float64)
        self.n_steps_ = step
        return self

    def _logits(self, X) -> np.ndarray:
        """Logits of each class (one column per class, binary included)."""
        X = validate_predict(self, X)
        Xn = apply_normaliser(X, self.normalisation, self.mean_, self.scale_)
        return Xn @ self.coef_.T + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the logits."""
        return softmax(self._logits(X), axis=1)

    def predict(self, X) -> np.ndarray:
        """Class with the largest logit, in the original label values."""
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]
