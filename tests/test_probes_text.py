"""Text-aware probes: known answers, no test-row leakage, estimator = batched episode scorer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from embedcyto.probes.text_episodes import text_scorer, zeroshot_logits
from embedcyto.probes.textprobes import CLAP, LPPP, TextLinear, TipAdapter, TipAdapterF, ZeroShot

C, D = 5, 24


def _data(seed=0, noise=0.3, n_train=60, n_val=40, n_test=300):
    rng = np.random.default_rng(seed)
    T = rng.standard_normal((C, D))
    T /= np.linalg.norm(T, axis=1, keepdims=True)

    def make(n):
        y = np.arange(n) % C
        return (T[y] + noise * rng.standard_normal((n, D)) / np.sqrt(D)).astype(np.float64), y
    return T, make(n_train), make(n_val), make(n_test)


def _estimators(T):
    return [TextLinear(T, 50.0, steps=60), TextLinear(T, 50.0, constraint="clap", steps=60),
            TipAdapter(T, 50.0), TipAdapter(T, 50.0, finetune=True, steps=5),
            LPPP(T, steps=60)]


def test_zero_shot_is_perfect_when_images_are_their_class_text_plus_noise():
    T, (X, y), _, (Xt, yt) = _data()
    assert (ZeroShot(T, 100.0).fit(X, y).predict(Xt) == yt).all()
    assert (zeroshot_logits(Xt, T, 100.0).argmax(1) == yt).all()
    with pytest.raises(Exception, match="needs the class text"):
        ZeroShot().fit(X, y)


@pytest.mark.parametrize("index", range(5))
def test_text_aware_probes_are_perfect_on_clean_features(index):
    T, (X, y), (Xv, yv), (Xt, yt) = _data()
    est = _estimators(T)[index].fit(X, y, Xv, yv)
    assert (est.predict(Xt) == yt).mean() == 1.0


@pytest.mark.parametrize("index", range(5))
def test_label_shuffled_features_give_chance(index):
    rng = np.random.default_rng(1)
    T, (X, _), (Xv, _), (Xt, _) = _data(noise=3.0, n_test=2000)
    y, yv, yt = (rng.integers(0, C, len(a)) for a in (X, Xv, Xt))
    est = _estimators(T)[index].fit(X, y, Xv, yv)
    assert abs((est.predict(Xt) == yt).mean() - 1 / C) < 0.05
    assert abs((zeroshot_logits(Xt, T, 100.0).argmax(1) == yt).mean() - 1 / C) < 0.05


def test_text_helps_where_the_support_alone_is_ambiguous():
    """With one noisy shot, starting from the text classifier beats ignoring it."""
    T, _, _, (Xt, yt) = _data(noise=2.0, n_test=1000)
    rng = np.random.default_rng(3)
    X = T + 2.0 * rng.standard_normal((C, D)) / np.sqrt(D)
    y = np.arange(C)
    with_text = (TextLinear(T, 50.0, steps=60).fit(X, y).predict(Xt) == yt).mean()
    without = (TextLinear(None, 50.0, steps=60).fit(X, y).predict(Xt) == yt).mean()
    assert with_text > without


def _episodes(rng, y, K, E):
    return np.stack([np.stack([rng.choice(np.flatnonzero(y == c), K, replace=False)
                               for c in range(C)]) for _ in range(E)])


@pytest.mark.parametrize("method, est", [
    ("textlinear", lambda T: TextLinear(T, 50.0, steps=40)),
    ("clap", lambda T: TextLinear(T, 50.0, constraint="clap", steps=40)),
    ("lppp", lambda T: LPPP(T, steps=40)),
])
def test_batched_scorer_equals_the_estimator_episode_by_episode(method, est):
    T, (X, y), _, (Xt, _) = _data(noise=1.0)
    idx = _episodes(np.random.default_rng(0), y, 3, 4)
    scores = text_scorer(method, X, Xt, text=T, logit_scale=50.0, steps=40)(idx)
    for e in range(4):
        rows = idx[e].reshape(-1)
        fitted = est(T).fit(X[rows], y[rows])
        np.testing.assert_allclose(-scores[:, e], fitted.logits(Xt), rtol=1e-6,
                                   atol=1e-6)


def test_tip_adapter_choice_never_depends_on_a_test_row():
    T, (X, y), (Xv, yv), (Xt, _) = _data(noise=1.5)
    idx = _episodes(np.random.default_rng(0), y, 2, 6)
    for method in ("tipadapter", "tipadapter_f"):
        first, second = [], []
        text_scorer(method, X, Xt, text=T, logit_scale=50.0, X_val=Xv, y_val=yv,
                    chosen=first)(idx)
        changed = Xt.copy()
        changed[0] = -changed[0] * 50
        text_scorer(method, X, changed, text=T, logit_scale=50.0, X_val=Xv, y_val=yv,
                    chosen=second)(idx)
        assert first == second and len(first) == 6
        third = []
        text_scorer(method, X, Xt, text=T, logit_scale=50.0, X_val=Xv[::-1].copy() * 0 + Xv[0],
                    y_val=yv, chosen=third)(idx)
        assert third != first  # the choice does depend on the validation rows


def test_tip_adapter_estimator_selects_on_validation_only():
    T, (X, y), (Xv, yv), _ = _data(noise=1.5)
    a = TipAdapter(T, 50.0).fit(X, y, Xv, yv)
    assert a.beta_ in a.betas and a.alpha_ in a.alphas and 0 < a.val_accuracy_ <= 1
    plain = TipAdapter(T, 50.0).fit(X, y)
    assert (plain.beta_, plain.alpha_) == (1.0, 1.0)


@parametrize_with_checks([TextLinear(steps=5), CLAP(steps=5), TipAdapter(),
                          TipAdapterF(steps=3), LPPP(steps=5)])
def test_sklearn_contract(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", ["zeroshot", "textlinear", "clap", "tipadapter",
                                  "tipadapter_f", "lppp"])
def test_every_text_registry_row_works_through_its_row(name):
    """The row's estimator learns, and an episodic row's scorer runs in the episode runner
    (equal to the estimator on each episode's supports where nothing is chosen on val)."""
    from embedcyto.probes import registry, run_episodes, support_indices

    spec = registry.get_method(name)
    assert spec.text
    T, (X, y), (Xv, yv), (Xt, yt) = _data(noise=1.0)
    kwargs = {"text": T, "logit_scale": 50.0}
    est = spec.estimator_class()(**kwargs)
    fit = (X, y, Xv, yv) if spec.needs_validation else (X, y)
    assert est.fit(*fit).score(Xt, yt) > 0.9
    if not spec.episodic:
        return
    ids = np.array([f"img{i:03d}" for i in range(y.size)])
    extra = {"X_val": Xv, "y_val": yv} if spec.needs_validation else {}
    out = run_episodes(X, y, ids, Xt, yt, 2, 3, 1, method=name, **kwargs, **extra)
    assert out["accuracy"].shape == (3,) and out["accuracy"].mean() > 0.9
    if not spec.needs_validation:
        for episode in range(3):
            idx = support_indices(ids, y, 2, 1, episode)
            ref = spec.estimator_class()(**kwargs)
            assert out["accuracy"][episode] == pytest.approx(ref.fit(X[idx], y[idx]).score(Xt, yt))


@pytest.mark.parametrize("method", ["tipadapter", "tipadapter_f"])
def test_tip_scorer_equals_the_estimator_at_the_chosen_beta_alpha(method):
    T, (X, y), (Xv, yv), (Xt, _) = _data(noise=1.0)
    idx = _episodes(np.random.default_rng(0), y, 2, 3)
    chosen = []
    scores = text_scorer(method, X, Xt, text=T, logit_scale=50.0, X_val=Xv, y_val=yv,
                         chosen=chosen)(idx)
    for e, (beta, alpha, _) in enumerate(chosen):
        rows = idx[e].reshape(-1)
        est = TipAdapter(T, 50.0, finetune=method == "tipadapter_f", betas=(beta,),
                         alphas=(alpha,)).fit(X[rows], y[rows], Xv, yv)
        np.testing.assert_allclose(-scores[:, e], est.logits(Xt), rtol=1e-5, atol=1e-5)
