"""Experiment 1: frozen features of every model on every dataset, probed.

For each (dataset, model): extract the frozen embeddings once, then the linear probe (default
protocol: L2-regularised logistic regression, C chosen on validation), the study's protocol
(``study_head``: a linear layer trained with AdamW for a fixed number of epochs), kNN, and
few-shot SimpleShot episodes, over seeds 1-3. Writes the report (Table 1 for accuracy and
balanced accuracy, HiCervix per level against HierSwin, few-shot tables and figures).

    python -m pipelines.exp1_linear --data-root ~/data --weights-dir ~/weights
    python -m pipelines.exp1_linear --smoke          # generated data, tiny random models
"""

from __future__ import annotations

import sys

from pipelines import steps
from pipelines.common import check_inputs, make_parser, run_main, settings_from_args

NAME = "exp1_linear"


def _body(argv) -> None:
    args = make_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    s = settings_from_args(NAME, args)
    methods = s.config["exp1"]["methods"]
    check_inputs(s, s.models)
    stores = steps.store_states(s, s.datasets, s.models)
    probes = (f"{', '.join(methods)} on {len(stores)} stores; seeds {list(s.seeds)}, few-shot "
              f"shots {list(s.shots)} x {s.episodes} episodes (rows already in "
              f"{s.probe_results} reused)")
    steps.print_plan(s, stores, [probes], [])
    if s.dry_run:
        return
    opened = steps.open_datasets(s, s.datasets)
    steps.extract_all(s, opened, s.models)
    steps.probe_all(s, s.datasets, s.models, methods, s.shots)
    steps.write_report(s)


def main(argv=None) -> int:
    """Run Experiment 1; returns the exit status (2 on missing inputs or a library error)."""
    return run_main(_body, argv)


if __name__ == "__main__":
    sys.exit(main())
