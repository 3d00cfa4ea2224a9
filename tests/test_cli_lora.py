"""``embedcyto lora`` end to end on generated data: learning, pairing with probes, run folders,
skips, kill -9, exported features, refusals and HiCervix levels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from embedcyto.backbones.runtime import torch_threads
from embedcyto.backbones.weights import file_sha256
from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.lora import runs
from embedcyto.probes.episodes import support_ids
from embedcyto.store import load_features, store_path

FAST = ["--device", "cpu", "--precision", "fp32", "--workers", "0", "--quiet"]
TRAIN = ["--lr", "2e-2", "--warmup", "5", "--batch-size", "16"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread when the cores are shared."""
    with torch_threads(1):
        yield


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A frozen tiny-clip store and one LoRA run (8 shots, seed 1) with exported features."""
    base = tmp_path_factory.mktemp("cli_lora")
    root = make_fixture("folder", base / "toy", per_class=40, seed=3)
    common = ["--dataset", "toy", "--layout", "folder", "--root", root, "--store",
              base / "cache"]
    with torch_threads(1):  # module fixtures run before the per-test one
        out = _invoke("extract", "--model", "tiny-clip", *common, "--device", "cpu",
                      "--precision", "fp32", "--workers", "0", "--quiet")
        assert out.exit_code == 0, out.output
        lora_args = ["lora", "--model", "tiny-clip", *common, "--runs", base / "runs",
                     "--shots", "8", "--seed", "1", "--iterations", "80", *TRAIN, *FAST]
        out = _invoke(*lora_args, "--export-features")
        assert out.exit_code == 0, out.output
    run = base / "runs" / "lora" / "toy" / "tiny-clip" / "shots-8" / "seed-1"
    return {"base": base, "root": root, "common": common, "args": lora_args, "run": run,
            "output": out.output}


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_a_run_learns_the_class_signal_and_reports_it(trained):
    metrics = _json(trained["run"] / runs.METRICS_FILE)
    assert metrics["n_train"] == 8 * 3 and metrics["iterations"] == 80
    assert metrics["test"]["n"] == metrics["n_test"] >= 24
    assert metrics["test"]["accuracy"] >= 0.6  # chance is 1/3
    losses = [e["loss"] for e in map(json.loads, (trained["run"] / runs.LOG_FILE)
                                     .read_text().splitlines())]
    assert len(losses) == 80 and np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    line = trained["output"].splitlines()[0]
    assert line.startswith("toy/tiny-clip shots-8 seed-1: accuracy ")
    assert f"{100 * metrics['test']['accuracy']:.1f}%" in line and str(trained["run"]) in line


def test_run_folder_holds_every_output_and_the_complete_marker(trained):
    run = trained["run"]
    names = {p.name for p in run.iterdir()}
    assert {runs.COMPLETE, runs.CONFIG_FILE, runs.METRICS_FILE, runs.LOG_FILE, runs.HEAD_FILE,
            runs.ADAPTER_DIR, runs.ROWS_FILE, runs.PREDICTIONS_FILE} <= names
    assert (run / runs.ADAPTER_DIR / "adapter_model.safetensors").is_file()
    config = _json(run / runs.CONFIG_FILE)
    assert config["config"]["shots"] == 8 and config["config"]["settings"]["targets"] == ["q", "v"]
    assert config["card"]["name"] == "tiny-clip" and len(config["support_ids_sha256"]) == 64
    assert config["parameters"]["lora"] == config["parameters"]["lora_expected"] == 2 * 2 * 2 * 128
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")]


def test_training_images_are_the_probe_support_set_of_the_same_shots_and_seed(trained):
    frozen = load_features(store_path(trained["base"] / "cache", "toy", "tiny-clip"))
    train = frozen.subset("train")
    expected = support_ids(train.ids, train.labels, 8, 1, 0)
    rows = _json(trained["run"] / runs.ROWS_FILE)
    assert sorted(rows["train"]["ids"]) == sorted(expected.tolist())
    assert set(rows["val"]["ids"]) <= set(frozen.subset("val").ids.tolist())


def test_exported_features_are_adapted_and_name_their_base_and_adapter(trained):
    cache = trained["base"] / "cache"
    frozen = load_features(store_path(cache, "toy", "tiny-clip"))
    adapted = load_features(store_path(cache, "toy", "tiny-clip+lora-shots-8-s1"))
    assert adapted.ids.tolist() == frozen.ids.tolist()
    assert np.array_equal(adapted.labels, frozen.labels)
    prov = adapted.provenance
    assert prov["base_model"] == "tiny-clip" and prov["card"]["name"] == "tiny-clip"
    assert prov["adapter_sha256"] == file_sha256(
        trained["run"] / runs.ADAPTER_DIR / "adapter_model.safetensors")
    assert prov["lora_run"]["shots"] == 8 and prov["model"] == "tiny-clip+lora-shots-8-s1"
    change = np.linalg.norm(adapted.X - frozen.X, axis=1) / np.linalg.norm(frozen.X, axis=1)
    assert np.median(change) > 1e-3  # the trained adapters move every embedding
    out = _invoke("probe", "--store", cache, "--dataset", "toy", "--model",
                  "tiny-clip+lora-shots-8-s1", "--methods", "knn", "--seeds", "1",
                  "--results", trained["base"] / "results")
    assert out.exit_code == 0, out.output
    assert "tiny-clip+lora" in out.output


def test_a_finished_run_is_skipped_and_other_settings_are_refused(trained):
    run = trained["run"]
    before = (run / runs.HEAD_FILE).stat().st_mtime_ns
    out = _invoke(*trained["args"], "--export-features")
    assert out.exit_code == 0 and "already done" in out.output and "cache hit" in out.output
    assert (run / runs.HEAD_FILE).stat().st_mtime_ns == before
    changed = [a if a != "2e-2" else "1e-2" for a in trained["args"]]
    out = CliRunner().invoke(cli, [str(a) for a in changed])
    assert out.exit_code != 0 and "--rerun" in out.output and "lr" in out.output
    assert "Traceback" not in out.output


def test_a_sweep_with_other_settings_lists_every_clash_by_its_differing_keys_first(trained):
    changed = [a if a != "2e-2" else "1e-2" for a in trained["args"]]
    changed[changed.index("1")] = "1,2"  # seed 2 is new: it must not be trained either
    out = CliRunner().invoke(cli, [str(a) for a in changed])
    assert out.exit_code != 0 and "Traceback" not in out.output
    assert "lr: 0.02 -> 0.01" in out.output and "nothing was trained" in out.output
    assert "weight_decay" not in out.output and "{" not in out.output  # no whole configs
    assert not (trained["run"].parent / "seed-2").exists()


def invoke_in_a_fresh_process(args: list[str]) -> subprocess.CompletedProcess:
    """``embedcyto ARGS`` in a new interpreter; its stdout holds the command's output, then
    ``exit N`` and ``heavy [...]``: the heavy libraries the command had imported."""
    code = ("import sys; from click.testing import CliRunner; from embedcyto.cli.main import cli; "
            f"r = CliRunner().invoke(cli, {args!r}); "
            "print(r.output); print('exit', r.exit_code); "
            "print('heavy', sorted(m for m in ('torch', 'sklearn', 'open_clip', 'h5py') "
            "if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_bad_arguments_are_refused_before_torch_is_imported(tmp_path):
    out = invoke_in_a_fresh_process(["lora", "--model", "tiny-clip", "--dataset", "toy",
                                     "--layout", "folder", "--root", str(tmp_path),
                                     "--shots", "1", "--rank", "0"])
    assert "LoRA rank must be an integer >= 1" in out.stdout, out.stdout + out.stderr
    assert "exit 1" in out.stdout and "heavy []" in out.stdout


def test_rerun_replaces_a_finished_run(tmp_path):
    root = make_fixture("bcfc", tmp_path / "bcfc", per_class=10)
    args = ["lora", "--model", "tiny-vit", "--dataset", "bcfc", "--root", root, "--store",
            tmp_path / "cache", "--runs", tmp_path / "runs", "--shots", "2", "--iterations",
            "8", *TRAIN, *FAST]
    assert _invoke(*args).exit_code == 0
    run = tmp_path / "runs" / "lora" / "bcfc" / "tiny-vit" / "shots-2" / "seed-1"
    first = (run / runs.CONFIG_FILE).stat().st_mtime_ns
    out = _invoke(*args, "--rerun")
    assert out.exit_code == 0 and "already done" not in out.output
    assert (run / runs.CONFIG_FILE).stat().st_mtime_ns != first and runs.is_complete(run)


@pytest.mark.slow  # a training process killed mid-run
def test_kill_9_mid_training_leaves_no_finished_looking_folder(trained, tmp_path):
    runs_dir = tmp_path / "runs"
    args = ["lora", "--model", "tiny-clip", *trained["common"], "--runs", runs_dir, "--shots",
            "2", "--seed", "7", *TRAIN, *FAST]
    code = "import sys; from embedcyto.cli.main import cli; sys.exit(cli())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args), "--iterations",
                             "100000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    final = runs_dir / "lora" / "toy" / "tiny-clip" / "shots-2" / "seed-7"
    tmp = final.parent / f".seed-7.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            log = tmp / runs.LOG_FILE
            if log.is_file() and log.read_text().count("\n") >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert tmp.is_dir() and not final.exists()
    out = _invoke(*args, "--iterations", "10")
    assert out.exit_code == 0, out.output
    assert runs.is_complete(final) and not tmp.exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--shots", "40"], "training images, fewer than shots=40"),
    (["--shots", "1", "--targets", "q,x"], "unknown LoRA target"),
    (["--fraction", "0"], "e.g. --fraction 10 trains on 10% of each class"),
    (["--fraction", "120"], "(0, 100]"),
    (["--shots", "1", "--fraction", "10"], "exactly one of"),
    ([], "exactly one of"),
])
def test_impossible_requests_are_refused_with_a_clear_message(trained, tmp_path, extra,
                                                              fragment):
    out = CliRunner().invoke(cli, [str(a) for a in [
        "lora", "--model", "tiny-clip", *trained["common"], "--runs", tmp_path / "runs",
        *extra, *FAST]])
    assert out.exit_code != 0 and fragment in out.output and "Traceback" not in out.output
    assert not (tmp_path / "runs").exists()


def test_too_many_shots_name_the_class(trained, tmp_path):
    out = CliRunner().invoke(cli, [str(a) for a in [
        "lora", "--model", "tiny-clip", *trained["common"], "--runs", tmp_path / "runs",
        "--shots", "40", *FAST]])
    assert "class 'high_grade' has 28 training images" in out.output


def test_hicervix_runs_report_every_level(tmp_path):
    root = make_fixture("hicervix", tmp_path / "hicervix", per_class=1)
    out = _invoke("lora", "--model", "tiny-vit", "--dataset", "hicervix", "--root", root,
                  "--store", tmp_path / "cache", "--runs", tmp_path / "runs", "--shots", "1",
                  "--iterations", "6", *TRAIN, *FAST)
    assert out.exit_code == 0, out.output
    run = tmp_path / "runs" / "lora" / "hicervix" / "tiny-vit" / "shots-1" / "seed-1"
    metrics = _json(run / runs.METRICS_FILE)
    assert set(metrics["levels"]) == {"level_1", "level_2", "level_3", "average"}
    assert metrics["levels"]["level_1"]["n"] == metrics["n_test"]
    assert metrics["levels"]["level_3"]["n"] <= metrics["levels"]["level_2"]["n"]
    assert metrics["n_train"] == 26
    for name in ("level_1", "level_2", "level_3", "average", "study-25"):
        assert name in out.output
    _check_study25_by_hand(root, run, metrics)


def _check_study25_by_hand(root, run, metrics):
    """The study's 25-class flat accuracy, recomputed from predictions.npz with a plain loop."""
    from embedcyto.datasets import open_dataset
    from embedcyto.datasets.hicervix_labels import LEVEL_MAPS, STUDY25, hicervix_study25_labels

    dataset = open_dataset("hicervix", root)
    truth_of = dict(zip((r.path for r in dataset.records), hicervix_study25_labels(dataset)))
    saved = np.load(run / runs.PREDICTIONS_FILE)
    right = total = 0
    for path, proba in zip(saved["ids"], saved["proba"]):
        truth = truth_of[str(path)]
        if truth < 0:
            continue
        sums = {}
        for fine, p in enumerate(proba):
            target = LEVEL_MAPS[STUDY25][fine]
            if target >= 0:
                sums[target] = sums.get(target, 0.0) + float(p)
        total += 1
        right += max(sums, key=sums.get) == truth
    assert metrics["study25"]["n"] == total < len(saved["ids"])  # AGC-only cells left out
    assert metrics["study25"]["accuracy"] == pytest.approx(right / total, abs=1e-6)


def test_hicervix_label_space_is_a_named_choice(tmp_path):
    root = make_fixture("hicervix", tmp_path / "hicervix", per_class=1)
    out = _invoke("lora", "--model", "tiny-vit", "--dataset", "hicervix", "--root", root,
                  "--store", tmp_path / "cache", "--runs", tmp_path / "runs", "--shots", "1",
                  "--iterations", "4", "--label-space", "level_3", *FAST)
    assert out.exit_code == 0, out.output
    run = tmp_path / "runs" / "lora" / "hicervix" / "tiny-vit" / "shots-1" / "seed-1"
    metrics, info = _json(run / runs.METRICS_FILE), _json(run / runs.CONFIG_FILE)
    assert len(info["dataset"]["classes"]) == 23 and "AGC" not in info["dataset"]["classes"]
    assert metrics["n_train"] == 23  # one cell per level-3 class: coarse-only cells left out
    assert metrics["test"]["n"] < metrics["n_test"] == metrics["levels"]["level_1"]["n"]
    assert set(metrics["levels"]) == {"level_1", "level_2", "level_3", "average"}
    bad = CliRunner().invoke(cli, [str(a) for a in [
        "lora", "--model", "tiny-vit", "--dataset", "hicervix", "--root", root, "--store",
        tmp_path / "cache", "--runs", tmp_path / "runs2", "--shots", "1", "--label-space",
        "level_9", *FAST]])
    assert bad.exit_code != 0 and "level_3_study25" in bad.output
    assert "choose --label-space LABEL_SPACE from classes" in bad.output
