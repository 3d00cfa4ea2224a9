"""LoRA training library: run config, data selection, schedule, training loop, run folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from embedcyto.backbones.runtime import torch_threads
from embedcyto.cli._common import open_for_store
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.errors import LoraError
from embedcyto.lora import runs
from embedcyto.lora.adapters import LoraSettings
from embedcyto.lora.config import LoraRunConfig
from embedcyto.lora.data import (
    batch_plan,
    fraction_rows,
    select_rows,
    support_rows,
    validation_rows,
)
from embedcyto.schedule import warmup_cosine as learning_rate
from embedcyto.probes.episodes import support_ids


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread when the cores are shared."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("lora_train")
    root = make_fixture("folder", base / "toy", per_class=12)
    dataset, split_dir = open_for_store("folder", str(root), store_dir=base / "cache")
    return dataset, split_dir, base


def _config(dataset, **kwargs) -> LoraRunConfig:
    base = dict(model="tiny-vit", dataset=dataset.name, shots=2, seed=1, lr=2e-2, warmup=3,
                iterations=12, batch_size=8, device="cpu", precision="fp32", num_workers=0,
                settings=LoraSettings(dropout=0.0))
    base.update(kwargs)
    return LoraRunConfig(**base)


# -- config ------------------------------------------------------------------------------------

def test_config_defaults_are_the_study_recipe_and_round_trip_through_json():
    config = LoraRunConfig(model="clip", dataset="sipakmed", shots=4, seed=2)
    assert (config.lr, config.weight_decay, config.min_lr) == (1e-3, 1e-2, 1e-6)
    assert config.batch_size == 32 and config.settings == LoraSettings()
    assert config.resolved_iterations(20) == 50 + 50 * 4
    assert config.resolved_warmup(config.resolved_iterations(20)) == 50
    again = LoraRunConfig.from_json(config.to_json())
    assert again == config and isinstance(again.settings, LoraSettings)
    assert config.mode == "shots-4" and config.variant == "clip+lora-shots-4-s2"
    frac = LoraRunConfig(model="clip", dataset="hicervix", fraction=2.5, seed=1)
    assert frac.mode == "frac-2.5" and LoraRunConfig.from_json(frac.to_json()) == frac
    assert LoraRunConfig(model="clip", dataset="x").mode == "all"


def test_default_iterations_without_shots_are_about_ten_epochs():
    config = LoraRunConfig(model="clip", dataset="hicervix", fraction=10)
    assert config.resolved_iterations(3200) == 10 * 100
    assert config.resolved_iterations(10) == 100  # never shorter than the floor
    assert config.resolved_eval_every(1000) == 100


def test_default_warmup_scales_with_short_runs_and_keeps_the_studys_50_steps():
    # every length the study uses (50 + 50*K for K >= 1 shots, >= 100 steps otherwise) keeps 50
    for steps in (100, 150, 250, 450, 850, 1000, 40000):
        assert LoraRunConfig(model="clip", dataset="x", iterations=steps).resolved_warmup(
            steps) == 50
    # a 20-step trial no longer needs --warmup: it warms up over its first half
    short = LoraRunConfig(model="clip", dataset="x", shots=1, iterations=20)
    assert short.resolved_iterations(4) == 20 and short.resolved_warmup(20) == 10
    assert LoraRunConfig(model="clip", dataset="x", iterations=1).resolved_warmup(1) == 0
    # an explicit warm-up is kept, and still refused when not shorter than the run
    assert LoraRunConfig(model="clip", dataset="x", warmup=7).resolved_warmup(20) == 7
    with pytest.raises(LoraError, match="lower `warmup=`"):
        LoraRunConfig(model="clip", dataset="x", warmup=30, epochs=1).resolved_iterations(64)


def test_epochs_set_the_length_of_fraction_runs():
    config = LoraRunConfig(model="clip", dataset="hicervix", fraction=10, epochs=100,
                           batch_size=32)
    assert config.resolved_iterations(320) == 100 * 10
    assert config.resolved_iterations(10) == 100  # one batch per pass, no floor when explicit
    assert LoraRunConfig(model="clip", dataset="x", epochs=2).resolved_iterations(64) == 4
    with pytest.raises(LoraError, match="not both"):
        LoraRunConfig(model="clip", dataset="x", epochs=2, iterations=5)


def test_from_dict_and_unknown_keys_share_one_helper_and_one_message():
    with pytest.raises(LoraError, match=r"unknown LoRA setting\(s\) \['ranks'\]"):
        LoraSettings.from_json('{"rank": 2, "ranks": 3}')
    with pytest.raises(LoraError, match="expected a JSON object"):
        LoraRunConfig.from_json("[1, 2]")
    with pytest.raises(LoraError, match="malformed"):
        LoraRunConfig.from_json("{not json")


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(shots=2, fraction=10.0), "not both"),
    (dict(precision="fp8"), "unknown precision"),
    (dict(label_space=""), "label_space must be"),
    (dict(fraction=0), "(0, 100]"),
    (dict(fraction=150), "(0, 100]"),
    (dict(shots=0), "shots must be an integer >= 1"),
    (dict(iterations=10, warmup=10), "lower `warmup=` or raise `iterations=`"),
    (dict(lr=-1.0), "lr must be"),
    (dict(min_lr=1.0), "must not exceed lr"),
    (dict(batch_size=0), "batch_size"),
])
def test_config_refuses_impossible_values(kwargs, fragment):
    with pytest.raises(LoraError, match=fragment.replace("(", r"\(").replace("]", r"\]")):
        LoraRunConfig(model="clip", dataset="x", **kwargs)


def test_unknown_fields_in_a_saved_config_are_refused():
    data = LoraRunConfig(model="clip", dataset="x").to_dict()
    data["colour"] = "blue"
    with pytest.raises(LoraError, match="colour"):
        LoraRunConfig.from_dict(data)


def test_the_single_process_team_has_the_distributed_teams_interface():
    from embedcyto.lora.ddp import DataParallel, SingleProcess, make_team

    public = {n for n in dir(DataParallel) if not n.startswith("_")} - {"ranks", "size"}
    assert public <= {n for n in dir(SingleProcess) if not n.startswith("_")}
    team = make_team(None, 8)
    assert isinstance(team, SingleProcess) and team.from_rank0(lambda: 7) == 7
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    loss, value = team.step_loss(logits, labels, lambda: None)
    assert value == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))
    with pytest.raises(LoraError, match="bad image"):
        team.step_loss(logits, labels, lambda: (_ for _ in ()).throw(LoraError("bad image")))


# -- schedule ----------------------------------------------------------------------------------

def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    lr, warm, total, floor = 1e-3, 50, 250, 1e-6
    values = [learning_rate(s, total, lr, warm, floor) for s in range(total)]
    assert values[0] == pytest.approx(lr / warm)
    assert values[warm - 1] == pytest.approx(lr) and values[warm] == pytest.approx(lr)
    assert np.all(np.diff(values[:warm]) > 0) and np.all(np.diff(values[warm:]) <= 0)
    assert values[-1] == pytest.approx(floor)
    middle = warm + (total - warm - 1) // 2
    assert values[middle] == pytest.approx(floor + 0.5 * (lr - floor), rel=1e-2)


# -- data --------------------------------------------------------------------------------------

def test_support_rows_are_the_probe_stages_episode_zero(toy):
    dataset, _, _ = toy
    train = [r for r in dataset.records if r.split == "train"]
    ids = np.array([r.path for r in train])
    labels = np.array([r.label for r in train])
    order = np.random.default_rng(0).permutation(len(ids))  # store rows in another order
    for shots, seed in ((1, 1), (3, 2)):
        rows = support_rows(dataset, shots, seed)
        expected = support_ids(ids[order], labels[order], shots, seed, 0)
        assert sorted(dataset.records[i].path for i in rows) == sorted(expected.tolist())
        assert len(rows) == shots * len(dataset.classes)


def test_validation_and_fraction_draws_are_stratified_deterministic_and_in_their_split(toy):
    dataset, _, _ = toy
    val = validation_rows(dataset, 1, seed=3)
    assert {dataset.records[i].split for i in val} == {"val"}
    assert sorted(dataset.records[i].label for i in val) == list(range(len(dataset.classes)))
    assert np.array_equal(val, validation_rows(dataset, 1, seed=3))
    half = fraction_rows(dataset, "train", 50, seed=1)
    per_class = np.bincount([dataset.records[i].label for i in half])
    full = np.bincount([r.label for r in dataset.records if r.split == "train"])
    assert np.array_equal(per_class, np.maximum(1, np.round(full * 0.5)).astype(int))
    assert not np.array_equal(np.sort(half), np.sort(fraction_rows(dataset, "train", 50, 2)))
    rows = select_rows(dataset, _config(dataset, shots=None, fraction=100.0))
    assert len(rows.train) == sum(r.split == "train" for r in dataset.records)


def test_too_many_shots_name_the_class_and_its_count(toy):
    dataset, _, _ = toy
    counts = np.bincount([r.label for r in dataset.records if r.split == "train"])
    with pytest.raises(LoraError, match=rf"class '{dataset.classes[0]}' has {counts[0]} "
                                        "training images"):
        select_rows(dataset, _config(dataset, shots=int(counts.max()) + 1))


def test_batch_plan_visits_every_image_once_per_pass_and_is_seeded():
    plan = batch_plan(10, 4, 5, seed=1)
    assert [len(b) for b in plan] == [4] * 5
    flat = [p for b in plan for p, _ in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert plan == batch_plan(10, 4, 5, seed=1) and plan != batch_plan(10, 4, 5, seed=2)
    assert len({s for b in plan for _, s in b}) == 20  # each image its own augmentation
    assert [len(b) for b in batch_plan(3, 32, 2, seed=0)] == [3, 3]


# -- training ----------------------------------------------------------------------------------

def test_gradient_checkpointing_gives_the_same_gradients():
    from embedcyto.backbones import build_backbone
    from embedcyto.lora.model import build_classifier, enable_grad_checkpointing

    for name in ("tiny-clip", "tiny-vit"):
        backbone = build_backbone(name, random_init=True)
        images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        grads = []
        for checkpointing in (False, True):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # peft draws A from the global generator
                model = build_classifier(backbone, LoraSettings(dropout=0.0), 3, seed=0)
            with torch.no_grad():  # non-zero B, so gradients reach A too
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
            if checkpointing:
                assert enable_grad_checkpointing(model.encoder) == "VisionTransformer"
            model.train()
            model(images).logsumexp(dim=1).sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.requires_grad})
        assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
        for n in grads[0]:
            torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_training_is_reproducible_for_a_seed(toy):
    from safetensors.torch import load_file

    from embedcyto.lora.train import train_lora

    dataset, split_dir, base = toy
    config = _config(dataset, settings=LoraSettings())  # with LoRA dropout
    heads = []
    for name in ("a", "b"):
        result = train_lora(dataset, config, runs_dir=base / f"repro-{name}", split_dir=split_dir)
        heads.append(load_file(str(result.run_dir / runs.HEAD_FILE)))
        info = json.loads((result.run_dir / runs.CONFIG_FILE).read_text())
        assert info["generated_data"] is True  # a fixture: the report will say so
        logged = [json.loads(x) for x in (result.run_dir / runs.LOG_FILE).read_text().split("\n")
                  if x]
        assert [e["step"] for e in logged] == list(range(1, 13))
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)


def test_an_exception_mid_training_leaves_no_run_folder_and_a_relaunch_completes(toy,
                                                                                monkeypatch):
    import embedcyto.lora.train as train_module

    dataset, split_dir, base = toy
    config = _config(dataset, seed=5)
    calls = {"n": 0}
    original = train_module._raise_read_errors

    def fail_at_step_five(errors, ds):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        original(errors, ds)

    monkeypatch.setattr(train_module, "_raise_read_errors", fail_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_lora(dataset, config, runs_dir=base / "interrupted",
                                split_dir=split_dir)
    final = runs.run_dir(base / "interrupted", config)
    assert calls["n"] == 5 and not final.exists()
    assert list(final.parent.iterdir()) == []  # the temporary folder went too
    monkeypatch.setattr(train_module, "_raise_read_errors", original)
    result = train_module.train_lora(dataset, config, runs_dir=base / "interrupted",
                                     split_dir=split_dir)
    assert result.run_dir == final and runs.is_complete(final) and not result.skipped


def test_leftover_temporary_folders_of_dead_processes_are_removed(tmp_path):
    final = tmp_path / "lora" / "d" / "m" / "shots-1" / "seed-1"
    final.parent.mkdir(parents=True)
    dead = final.parent / ".seed-1.tmp-999999999"
    (dead / "adapter").mkdir(parents=True)
    removed = runs.clean_leftovers(final)
    assert removed == [dead] and not dead.exists()


def test_best_val_restores_the_best_step_and_saved_run_reloads_to_the_same_predictions(toy):
    from embedcyto.lora.model import load_classifier
    from embedcyto.lora.train import predict_proba, train_lora

    dataset, split_dir, base = toy
    config = _config(dataset, best_val=True, eval_every=2, iterations=14, seed=2)
    result = train_lora(dataset, config, runs_dir=base / "best", split_dir=split_dir)
    val = result.metrics["val"]
    assert val["restored_best"] and val["best_step"] in range(2, 15, 2)
    model = load_classifier(result.run_dir)
    saved = np.load(result.run_dir / runs.PREDICTIONS_FILE)
    rows = [next(i for i, r in enumerate(dataset.records) if r.path == p) for p in saved["ids"]]
    proba = predict_proba(model, dataset, np.array(rows), device=torch.device("cpu"))
    np.testing.assert_allclose(proba, saved["proba"], rtol=1e-4, atol=1e-5)
    rows_file = json.loads((result.run_dir / runs.ROWS_FILE).read_text())
    val_rows = np.array([next(i for i, r in enumerate(dataset.records) if r.path == p)
                         for p in rows_file["val"]["ids"]])
    val_proba = predict_proba(model, dataset, val_rows, device=torch.device("cpu"))
    accuracy = np.mean(val_proba.argmax(1) == np.array(rows_file["val"]["labels"]))
    assert accuracy == pytest.approx(val["best_accuracy"])
    assert math.isclose(result.metrics["test"]["accuracy"],
                        float(np.mean(saved["y_pred"] == saved["y_true"])))


def test_bf16_runs_keep_frozen_weights_in_bf16_and_train_float32_parameters(toy):
    from embedcyto.lora.model import load_classifier
    from embedcyto.lora.train import train_lora

    dataset, split_dir, base = toy
    result = train_lora(dataset, _config(dataset, precision="bf16", seed=3),
                        runs_dir=base / "bf16", split_dir=split_dir)
    info = json.loads((result.run_dir / runs.CONFIG_FILE).read_text())
    assert info["resolved"]["precision"] == "bfloat16"
    assert np.isfinite(result.metrics["final_loss"])
    model = load_classifier(result.run_dir)
    params = dict(model.named_parameters())
    trained = {n for n in params if "lora_" in n or n.startswith("head.")}
    assert len(trained) == 2 * 2 * 2 + 2  # A and B on q and v of 2 blocks, head weight + bias
    assert {params[n].dtype for n in params if n not in trained} == {torch.bfloat16}
    assert {params[n].dtype for n in trained} == {torch.float32}


def test_a_published_run_folder_has_every_file_fsynced_before_complete(tmp_path, monkeypatch):
    """COMPLETE promises a whole run: every file under the staged folder is fsynced first."""
    import os

    from embedcyto.lora.runs import COMPLETE, Staging

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    final = tmp_path / "runs" / "seed-1"
    with Staging(final) as staged:
        (staged.tmp / "adapter").mkdir()
        (staged.tmp / "adapter" / "weights.bin").write_bytes(b"x" * 10)
        (staged.tmp / "metrics.json").write_text("{}")
        staged.publish()
    names = [os.path.basename(p) for p in synced]
    assert "weights.bin" in names and "metrics.json" in names
    marker = next(i for i, n in enumerate(names) if COMPLETE in n)
    assert names.index("weights.bin") < marker and names.index("metrics.json") < marker
    assert (final / COMPLETE).read_text() == "finished\n"
