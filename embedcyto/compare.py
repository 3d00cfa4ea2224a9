"""Which model? Paired comparisons of every model of a dataset, per method and shots.

Reads what the probe and LoRA stages kept (probe rows with their per-image predictions and
per-episode accuracies; LoRA run folders with ``predictions.npz``), pairs the models on the same
test images or the same episodes, and ranks them with groups of models that cannot be told
apart (:func:`embedcyto.stats.tiers`), after Holm's correction over all pairs of one comparison.

* Full-data probes and LoRA: paired bootstrap over test images of the accuracy difference (the
  primary p-value), McNemar's exact test beside it, and a sign-flip test over seeds when both
  models have two or more seeds that differ. With several seeds, an image's score is the share
  of seeds that got it right.
* Few-shot probes: paired t over episodes (episode ``i`` of seed ``s`` uses the same support set
  for every model), all common seeds pooled.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcyto import stats
from embedcyto.errors import ReportError
from embedcyto.predictions import ROW_FIELD, read_predictions

ALPHA = 0.05


@dataclass(frozen=True)
class Pair:
    """One pair of models: ``diff = accuracy(a) - accuracy(b)`` with interval and p-values."""

    a: str
    b: str
    diff: float
    low: float
    high: float
    p: float
    p_holm: float
    test: str
    n: int
    mcnemar_p: float | None = None
    seeds_p: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


@dataclass
class Comparison:
    """Every model of one (dataset, method, shots or fraction), ranked."""

    dataset: str
    method: str
    shots: int | None
    fraction: float | None
    unit: str  # "images" or "episodes"
    accuracy: dict[str, float] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.fraction is not None:
            return f"{self.method}, {self.fraction:g} % of the data"
        return self.method if self.shots is None else f"{self.method}, {self.shots} shots"

    @property
    def stem(self) -> str:
        tail = "" if self.shots is None else f"_{self.shots}shot"
        tail += "" if self.fraction is None else f"_frac{self.fraction:g}"
        return f"{self.dataset}_{self.method}{tail}"


@dataclass
class _Entry:
    """One model's results in one comparison: per seed, accuracy and what is paired."""

    accuracy: dict[int, float] = field(default_factory=dict)
    predictions: dict[int, Path] = field(default_factory=dict)
    episodes: dict[int, list[float]] = field(default_factory=dict)


def _probe_entries(results_dir: Path, dataset: str) -> dict[tuple, dict[str, _Entry]]:
    from embedcyto.probes.registry import non_default_options
    from embedcyto.probes.results import read_results

    out: dict[tuple, dict[str, _Entry]] = {}
    for row in read_results(results_dir / f"{dataset}.jsonl"):
        options = non_default_options(row["method"], row.get("options"))
        method = row["method"] + ("" if not options else
                                  " " + json.dumps(options, sort_keys=True))
        entry = out.setdefault((method, row.get("shots"), None), {}).setdefault(
            row["model"], _Entry())
        seed = row.get("seed") if row.get("seed") is not None else 0
        entry.accuracy[seed] = float(row["metrics"]["accuracy"])
        if row.get("episode_accuracy"):
            entry.episodes[seed] = list(row["episode_accuracy"])
        if row.get(ROW_FIELD):
            entry.predictions[seed] = results_dir / row[ROW_FIELD]
    return out


def _lora_entries(runs_dir: Path, dataset: str) -> dict[tuple, dict[str, _Entry]]:
    """Finished LoRA runs of ``dataset`` by (method, shots, fraction) and model.

    Runs that learned another label space (``--label-space``) answer another question, so they
    form a comparison of their own (``lora {"label_space": ...}``). A model whose seeds were
    run with different settings becomes one entry per set of settings, named as the report
    names them (``clip [lr 0.02]``, :func:`embedcyto.report.variants.split_variants`), so no
    entry pools seeds of different settings.
    """
    from embedcyto.datasets.records import DATASET_CLASSES
    from embedcyto.report.records import load_lora_records
    from embedcyto.report.variants import split_variants

    found = []
    for record in load_lora_records(runs_dir, dataset).records:
        space = json.loads(record["variant"]).get("label_space") or DATASET_CLASSES
        method = "lora" if space == DATASET_CLASSES else \
            "lora " + json.dumps({"label_space": space})
        found.append((method, Path(record["source"]), record))
    named, _ = split_variants([dict(r, method=m) for m, _, r in found])
    out: dict[tuple, dict[str, _Entry]] = {}
    for (method, folder, record), renamed in zip(found, named):
        entry = out.setdefault((method, record["shots"], record["fraction"]), {})
        entry = entry.setdefault(renamed["model"], _Entry())
        seed = int(record["seed"] or 0)
        entry.accuracy[seed] = record["accuracy"]
        if (folder / "predictions.npz").is_file():
            entry.predictions[seed] = folder / "predictions.npz"
    return out


def _image_scores(entry: _Entry, seeds: Sequence[int]) -> tuple[dict[str, float], dict]:
    """Per image: share of ``seeds`` that got it right; and the first seed's right/wrong."""
    total: dict[str, float] = {}
    first = None
    for seed in seeds:
        pred = read_predictions(entry.predictions[seed])
        scored = pred.y_true >= 0  # a run on another label space: test cells it cannot name
        right = dict(zip(pred.ids[scored].tolist(), pred.correct[scored].tolist()))
        first = first or right
        for key, value in right.items():
            total[key] = total.get(key, 0.0) + value / len(seeds)
    return total, first


def _image_pair(a: _Entry, b: _Entry, rng) -> tuple:
    common = sorted(set(a.predictions) & set(b.predictions))
    seeds_a, seeds_b = (common, common) if common else (sorted(a.predictions),
                                                       sorted(b.predictions))
    score_a, first_a = _image_scores(a, seeds_a)
    score_b, first_b = _image_scores(b, seeds_b)
    ids = sorted(set(score_a) & set(score_b))
    if not ids:
        raise ReportError("two models' predictions share no test image id: they were not "
                          "evaluated on the same split; extract both from the same dataset root")
    boot = stats.paired_bootstrap([score_a[i] for i in ids], [score_b[i] for i in ids], rng)
    mc = stats.mcnemar_exact([first_a[i] for i in ids], [first_b[i] for i in ids])
    seeds_p = None
    acc = [(a.accuracy[s], b.accuracy[s]) for s in sorted(set(a.accuracy) & set(b.accuracy))]
    if len(acc) >= 2 and len({x for x, _ in acc} | {y for _, y in acc}) > 2:
        seeds_p = stats.sign_flip([x for x, _ in acc], [y for _, y in acc]).p
    return boot, mc.p, seeds_p


def _episode_pair(a: _Entry, b: _Entry) -> tuple:
    common = sorted(set(a.episodes) & set(b.episodes))
    if not common or any(len(a.episodes[s]) != len(b.episodes[s]) for s in common):
        raise ReportError("two models' few-shot rows share no seed with the same number of "
                          "episodes, so their episodes cannot be paired: probe both "
                          "(`embedcyto probe`) with the same `seeds=` and `episodes=`")
    xa = np.concatenate([a.episodes[s] for s in common])
    xb = np.concatenate([b.episodes[s] for s in common])
    return stats.paired_t(xa, xb), None, None


def _compare(dataset: str, key: tuple, entries: dict[str, _Entry], rng) -> Comparison:
    method, shots, fraction = key
    episodic = all(e.episodes for e in entries.values())
    comp = Comparison(dataset, method, shots, fraction, "episodes" if episodic else "images")
    usable = {m: e for m, e in entries.items() if e.episodes or e.predictions}
    for model in sorted(set(entries) - set(usable)):
        comp.notes.append(f"{model}: no per-image predictions (rows written before embedcyto "
                          "kept them); re-run it (`embedcyto probe` with `rerun=True`) to "
                          "include it")
    comp.accuracy = {m: float(np.mean(list(e.accuracy.values()))) for m, e in usable.items()}
    if len(usable) < 2:
        comp.notes.append("fewer than two models can be paired: no comparison")
        return comp
    raw = []
    for a, b in itertools.combinations(sorted(usable, key=lambda m: -comp.accuracy[m]), 2):
        test, mc_p, seeds_p = (_episode_pair(usable[a], usable[b]) if episodic
                               else _image_pair(usable[a], usable[b], rng))
        raw.append((a, b, test, mc_p, seeds_p))
    adjusted = stats.holm([t.p for _, _, t, _, _ in raw])
    comp.pairs = [Pair(a, b, t.diff, t.low, t.high, t.p, float(q), t.test, t.n, mc, sp)
                  for (a, b, t, mc, sp), q in zip(raw, adjusted)]
    lookup = {frozenset((p.a, p.b)): p.significant for p in comp.pairs}
    names = list(comp.accuracy)
    comp.groups = stats.tiers(names, [comp.accuracy[m] for m in names],
                              lambda x, y: lookup[frozenset((x, y))])
    return comp


def compare_dataset(dataset: str, results_dir="results/probe", runs_dir="runs",
                    method: str | None = None, shots: int | None = None,
                    seed: int = 0) -> list[Comparison]:
    """Every comparison of ``dataset`` (optionally one method and/or shots), with 2+ models.

    ``seed`` seeds the bootstrap, so the same files always give the same numbers.

    Raises:
        ReportError: nothing to compare, or results that cannot be paired.
    """
    found = {**_probe_entries(Path(results_dir), dataset), **_lora_entries(Path(runs_dir),
                                                                           dataset)}
    keys = [k for k in found if (method is None or k[0].split(" ")[0] == method)
            and (shots is None or k[1] == shots)]
    out = [_compare(dataset, k, found[k], np.random.default_rng(seed))
           for k in sorted(keys, key=lambda k: (k[0], k[1] or 0, k[2] or 0))
           if len(found[k]) >= 2]
    if not out:
        what = " ".join(x for x in (method and f"method {method}",
                                    shots and f"{shots} shots") if x)
        raise ReportError(f"nothing to compare for dataset {dataset!r} {what}: it needs results "
                          f"of two or more models in {results_dir} or {runs_dir}; run "
                          "`embedcyto probe` on two models first")
    return out


def format_comparison(comp: Comparison) -> str:
    """A plain-text ranking (group number, model, accuracy) and the pairwise table."""
    group_of = {m: i + 1 for i, g in enumerate(comp.groups) for m in g}
    lines = [f"{comp.dataset} — {comp.label} (paired over {comp.unit}; Holm-corrected, "
             f"alpha {ALPHA})", f"  {'group':>5}  {'model':<20} {'accuracy':>9}"]
    for g in comp.groups:
        for m in g:
            lines.append(f"  {group_of[m]:>5}  {m:<20} {100 * comp.accuracy[m]:8.2f}%")
    lines.append(f"  {'A vs B':<32} {'diff':>7} {'95% CI':>17} {'p':>8} {'p (Holm)':>9}"
                 f" {'McNemar':>8} {'seeds':>6}")
    for p in comp.pairs:
        fmt = lambda v: "" if v is None else f"{v:.3g}"  # noqa: E731
        lines.append(f"  {p.a + ' vs ' + p.b:<32} {100 * p.diff:+7.2f} "
                     f"[{100 * p.low:+6.2f}, {100 * p.high:+6.2f}] {p.p:8.3g} {p.p_holm:9.3g}"
                     f" {fmt(p.mcnemar_p):>8} {fmt(p.seeds_p):>6}"
                     + ("  *" if p.significant else ""))
    lines += [f"  note: {n}" for n in comp.notes]
    return "\n".join(lines)
