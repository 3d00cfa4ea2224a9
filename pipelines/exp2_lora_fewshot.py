"""Experiment 2: LoRA few-shot fine-tuning of every model on every dataset.

For each (dataset, model, shots, seed): LoRA (study settings: rank 2 on q and v, alpha 1,
dropout 0.25, rank-stabilised scaling) and a linear head trained on the few-shot support set -
the very images the frozen few-shot probe uses for that (shots, seed) - then tested on the whole
test split. Shots 1, 2, 4, 8, 16 by default (``--shots 1,2,4,8,16,all``: "all" adds a run on the
whole training split), seeds 1-3. The frozen features of Experiment 1 are extracted and probed
too (linear probe and SimpleShot episodes, reused when already there), so the report's
accuracy-vs-shots figure shows each model's linear-probe line.

    python -m pipelines.exp2_lora_fewshot --data-root ~/data --weights-dir ~/weights
    python -m pipelines.exp2_lora_fewshot --smoke
"""

from __future__ import annotations

import sys

from pipelines import steps
from pipelines.common import check_inputs, make_parser, run_main, settings_from_args

NAME = "exp2_lora_fewshot"


def _body(argv) -> None:
    args = make_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    s = settings_from_args(NAME, args)
    cfg = s.config["exp2"]
    lora_seeds = s.config["smoke"]["lora_seeds"] if s.smoke and not args.seeds else s.seeds
    shots = list(s.shots) + ([None] if s.include_all else [])
    configs = steps.lora_configs(s, s.datasets, s.models, shots=shots, seeds=lora_seeds,
                                 overrides=cfg.get("lora"))
    check_inputs(s, s.models)
    stores = steps.store_states(s, s.datasets, s.models)
    probes = (f"{', '.join(cfg['frozen_methods'])} on {len(stores)} stores (the Experiment 1 "
              f"line; rows already in {s.probe_results} reused)")
    steps.print_plan(s, stores, [probes], configs)
    if s.dry_run:
        return
    opened = steps.open_datasets(s, s.datasets)
    steps.extract_all(s, opened, s.models)
    steps.probe_all(s, s.datasets, s.models, cfg["frozen_methods"], s.shots)
    steps.lora_all(s, opened, configs)
    steps.write_report(s, steps.lora_plans("fewshot", s, s.models, shots=s.shots,
                                           seeds=lora_seeds, overrides=cfg.get("lora")))


def main(argv=None) -> int:
    """Run Experiment 2; returns the exit status (2 on missing inputs or a library error)."""
    return run_main(_body, argv)


if __name__ == "__main__":
    sys.exit(main())
