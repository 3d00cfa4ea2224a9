"""Distributed LoRA: batch slicing, global-batch dropout, and torchrun runs equal to one process."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from tracebacks import own_frames

from embedcyto.backbones.runtime import torch_threads
from embedcyto.cli.main import cli
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.errors import LoraError
from embedcyto.lora import runs
from embedcyto.lora.data import batch_plan, rank_bounds, rank_plan
from embedcyto.lora.ddp import DataParallel, GlobalBatchDropout

# -- batch slicing -----------------------------------------------------------------------------


def test_rank_bounds_are_contiguous_nearly_equal_and_cover_the_batch():
    assert rank_bounds(8, 2) == [(0, 4), (4, 8)]
    assert rank_bounds(5, 2) == [(0, 3), (3, 5)]
    assert rank_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert rank_bounds(4, 1) == [(0, 4)]
    for size, world in ((32, 8), (33, 4), (9, 9), (100, 7)):
        bounds = rank_bounds(size, world)
        assert bounds[0][0] == 0 and bounds[-1][1] == size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        lengths = [stop - start for start, stop in bounds]
        assert max(lengths) - min(lengths) <= 1 and min(lengths) >= 1


def test_rank_plans_put_together_are_the_single_process_plan_with_its_seeds():
    plan = batch_plan(10, 5, 7, seed=3)
    parts = [rank_plan(plan, rank, 2) for rank in range(2)]
    assert [len(p) for p in parts] == [7, 7]
    for step, batch in enumerate(plan):
        assert parts[0][step] + parts[1][step] == batch  # (position, augmentation seed) pairs
        assert (len(parts[0][step]), len(parts[1][step])) == (3, 2)
    assert rank_plan(plan, 0, 1) == plan


def test_fewer_images_per_step_than_ranks_and_bad_ranks_are_refused():
    with pytest.raises(LoraError, match=r"2 image\(s\), fewer than the 4 ranks.*batch_size="):
        rank_bounds(2, 4)
    with pytest.raises(LoraError, match="integer >= 1"):
        rank_bounds(4, 0)
    with pytest.raises(LoraError, match="outside 0..1"):
        rank_plan(batch_plan(4, 4, 1, seed=0), 2, 2)


# -- one rank's share of the arithmetic, checked in one process ----------------------------------

class _FakeRanks:
    """The collective calls DataParallel makes, answered as a job of ``world_size`` would."""

    def __init__(self, rank: int, world_size: int, sums=None):
        self.rank, self.world_size, self.sums = rank, world_size, sums

    def all_ok(self, fn, summary=lambda v: None):
        value = fn()
        mine = summary(value)
        return value, [mine if s is None else s for s in self.sums]


@pytest.mark.parametrize("size, world", [(8, 2), (5, 2), (7, 3)])
def test_averaging_rank_gradients_gives_the_global_batch_gradient(size, world):
    gen = torch.Generator().manual_seed(size)
    x, labels = torch.randn(size, 6, generator=gen), torch.randint(0, 3, (size,), generator=gen)
    head = torch.nn.Linear(6, 3)
    full = torch.nn.functional.cross_entropy(head(x), labels)
    expected = torch.autograd.grad(full, head.weight)[0]
    bounds = rank_bounds(size, world)
    with torch.no_grad():
        sums = [float(torch.nn.functional.cross_entropy(head(x[a:b]), labels[a:b],
                                                        reduction="sum")) for a, b in bounds]
    grads, means = [], []
    for rank, (a, b) in enumerate(bounds):
        team = DataParallel(_FakeRanks(rank, world, sums), size)
        assert (team.start, team.stop) == (a, b)
        loss, mean = team.step_loss(head(x[a:b]), labels[a:b], lambda: None)
        grads.append(torch.autograd.grad(loss, head.weight)[0])
        means.append(mean)
    torch.testing.assert_close(sum(grads) / world, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(means, float(full.detach()), rtol=1e-6)


def test_global_batch_dropout_gives_each_row_its_single_process_mask():
    x = torch.randn(5, 4, 16)
    torch.manual_seed(11)
    reference = torch.nn.Dropout(0.25)(x)
    parts = []
    for start, stop in rank_bounds(5, 2):
        torch.manual_seed(11)  # every rank's generator is in the same state
        parts.append(GlobalBatchDropout(0.25, start, stop, 5)(x[start:stop]))
    torch.testing.assert_close(torch.cat(parts), reference, rtol=0, atol=0)
    assert (reference == 0).any()  # the masks did drop something
    layer = GlobalBatchDropout(0.25, 0, 3, 5)
    with pytest.raises(LoraError, match="3 images but got a batch of 4"):
        layer(x[:4])
    torch.testing.assert_close(layer.eval()(x[:4]), x[:4])


# -- torchrun --------------------------------------------------------------------------------

ARGS = ["--model", "tiny-vit", "--dataset", "sipakmed", "--shots", "2", "--seed", "1",
        "--random-weights", "--workers", "0", "--precision", "fp32", "--device", "cpu",
        "--iterations", "6", "--warmup", "2", "--batch-size", "5", "--lr", "2e-2",
        "--eval-every", "2", "--quiet"]  # dropout stays at its default 0.25


def torchrun(args, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "embedcyto", "lora", *args]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / runs.LOG_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_fixture("sipakmed", tmp_path_factory.mktemp("ddp") / "data", per_class=8)


@pytest.fixture
def one_thread():
    """The in-process reference run, on one thread like each torchrun rank."""
    with torch_threads(1):
        yield


@pytest.mark.slow  # two torchrun ranks
def test_two_ranks_train_like_one_process_and_rank0_writes_one_run(fixture_root, tmp_path,
                                                                   one_thread):
    where = ["--root", str(fixture_root), "--store", str(tmp_path / "cache")]
    first = torchrun(ARGS + where + ["--runs", str(tmp_path / "ddp")])
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("sipakmed/tiny-vit shots-2 seed-1: accuracy") == 1  # rank 0 only
    single = CliRunner().invoke(cli, ["lora", *ARGS, *where, "--runs", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    ddp_dir = runs.run_dir(tmp_path / "ddp", _config_like())
    one_dir = runs.run_dir(tmp_path / "one", _config_like())
    assert sorted(p.name for p in ddp_dir.parent.iterdir()) == ["seed-1"]  # no hidden leftovers
    assert runs.is_complete(ddp_dir) and runs.is_complete(one_dir)

    ddp_log, one_log = read_log(ddp_dir), read_log(one_dir)
    assert [e["step"] for e in ddp_log] == list(range(1, 7))
    np.testing.assert_allclose([e["loss"] for e in ddp_log], [e["loss"] for e in one_log],
                               rtol=1e-4)
    assert [e["lr"] for e in ddp_log] == [e["lr"] for e in one_log]
    assert [e.get("val_accuracy") for e in ddp_log] == [e.get("val_accuracy") for e in one_log]
    assert sum("val_accuracy" in e for e in ddp_log) == 3
    assert ddp_log[-1]["loss"] != one_log[0]["loss"]  # it trained

    ddp_info, one_info = (runs.read_run_config(d) for d in (ddp_dir, one_dir))
    assert ddp_info["resolved"]["world_size"] == 2 and one_info["resolved"]["world_size"] == 1
    assert ddp_info["identity"] == one_info["identity"]
    for name in ("weight", "bias"):
        torch.testing.assert_close(load_file(str(ddp_dir / runs.HEAD_FILE))[name],
                                   load_file(str(one_dir / runs.HEAD_FILE))[name],
                                   rtol=1e-4, atol=1e-5)
    ddp_pred, one_pred = (np.load(d / runs.PREDICTIONS_FILE) for d in (ddp_dir, one_dir))
    np.testing.assert_allclose(ddp_pred["proba"], one_pred["proba"], atol=1e-4)

    before = (ddp_dir / runs.COMPLETE).stat().st_mtime_ns
    again = torchrun(ARGS + where + ["--runs", str(tmp_path / "ddp")])
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already done") == 1
    assert (ddp_dir / runs.COMPLETE).stat().st_mtime_ns == before


@pytest.mark.slow  # two torchrun ranks
def test_an_unreadable_image_on_one_rank_stops_both_cleanly(fixture_root, tmp_path):
    root = shutil.copytree(fixture_root, tmp_path / "data")
    store, runs_root = tmp_path / "cache", tmp_path / "runs"
    where = ["--root", str(root), "--store", str(store), "--runs", str(runs_root)]
    from embedcyto.cli._common import open_for_store
    from embedcyto.lora.data import select_rows

    dataset, _ = open_for_store("sipakmed", str(root), store_dir=store)
    train = select_rows(dataset, _config_like())
    bad = root / dataset.records[int(train.train[0])].path
    bad.write_bytes(b"not an image")
    failed = torchrun(ARGS + where + ["--on-bad-image", "error"])  # found when training
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2, failed.stderr
    assert all(bad.name in e and "--on-bad-image skip" in e for e in errors)
    assert sum(bool(re.match(r"Error: rank [01] stopped", e)) for e in errors) == 1
    assert not own_frames(failed.stderr)
    folder = runs.run_dir(runs_root, _config_like())
    assert not folder.parent.exists() or list(folder.parent.iterdir()) == []


def _config_like():
    from embedcyto.lora.adapters import LoraSettings
    from embedcyto.lora.config import LoraRunConfig

    return LoraRunConfig(model="tiny-vit", dataset="sipakmed", shots=2, seed=1,
                         settings=LoraSettings(), batch_size=5, iterations=6, warmup=2)


TEXT_ARGS = ["--model", "tiny-clip", "--dataset", "sipakmed", "--shots", "2", "--seed", "1",
             "--random-weights", "--workers", "0", "--precision", "fp32", "--device", "cpu",
             "--iterations", "4", "--warmup", "1", "--batch-size", "5", "--lr", "2e-2",
             "--eval-every", "0", "--quiet", "--head", "text", "--text-lora"]


@pytest.mark.slow
def test_two_ranks_train_the_text_side_like_one_process(fixture_root, tmp_path, one_thread):
    """Text-side LoRA dropout is not cut per rank: every rank embeds every prompt with the
    same masks, so two ranks still give the single-process run."""
    where = ["--root", str(fixture_root), "--store", str(tmp_path / "cache")]
    ddp = torchrun(TEXT_ARGS + where + ["--runs", str(tmp_path / "ddp")])
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single = CliRunner().invoke(cli, ["lora", *TEXT_ARGS, *where, "--runs",
                                      str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    folders = [next((tmp_path / d).glob("lora/sipakmed/tiny-clip/shots-2-textlora/seed-1"))
               for d in ("ddp", "one")]
    logs = [read_log(f) for f in folders]
    np.testing.assert_allclose([e["loss"] for e in logs[0]], [e["loss"] for e in logs[1]],
                               rtol=1e-4)
    text = [load_file(str(f / "text_adapter" / "adapter_model.safetensors")) for f in folders]
    assert any(v.abs().max() > 0 for k, v in text[1].items() if "lora_B" in k)
    for key in text[1]:
        torch.testing.assert_close(text[0][key], text[1][key], rtol=1e-4, atol=1e-5)
