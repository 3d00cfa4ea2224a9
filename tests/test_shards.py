"""Sharded extraction: --shard parts + merge, torchrun ranks, kill -9 resume, merge refusals."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from killed_extraction import kill_extraction_after
from tracebacks import own_frames

from embedcyto import extract as ex
from embedcyto.backbones import get_card
from embedcyto.cli.main import cli
from embedcyto.datasets import open_dataset
from embedcyto.datasets.splits import dataset_split_hash
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.distributed import RankEnv
from embedcyto.errors import EmbedcytoError, StaleStoreError, StoreError
from embedcyto.store import Shard, load_features, merge_shards, shard_bounds, store_path
from embedcyto.store import provenance as prov
from embedcyto.store.paths import partial_dir
from embedcyto.store.shards import open_shard_writer, part_path, shards_dir

MODEL = "tiny-clip"  # its kernels give other values for a row in a batch of another size


def config(batch_size=3, **kwargs):
    return ex.ExtractConfig(batch_size=batch_size, num_workers=0, device="cpu",
                            precision=kwargs.pop("precision", "fp32"), progress=False, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 20-image SIPaKMeD fixture, its split, and the single-process store as reference."""
    base = tmp_path_factory.mktemp("shards")
    root = make_fixture("sipakmed", base / "data", per_class=4)
    split_dir = base / "split"
    dataset = open_dataset("sipakmed", root, split_dir=split_dir)
    ref = ex.extract_features(dataset, MODEL, store_dir=base / "ref", split_dir=split_dir,
                              config=config())
    return dataset, split_dir, load_features(ref.path)


def run_shard(data, store, shard, **kwargs):
    dataset, split_dir, _ = data
    cfg = config(**kwargs)
    return ex.extract_features(dataset, MODEL, store_dir=store, split_dir=split_dir,
                               config=cfg, shard=shard)


def assert_same_store(a, b):
    assert list(a.ids) == list(b.ids)
    for name in ("labels", "splits", "groups"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.X, b.X)
    assert a.X.dtype == b.X.dtype
    assert (a.classes, a.label_spaces, a.hierarchy) == (b.classes, b.label_spaces, b.hierarchy)
    assert prov.differences(a.provenance, b.provenance) == []


def test_bounds_are_contiguous_batch_aligned_and_cover_every_row():
    assert shard_bounds(20, 2, 3) == [(0, 9), (9, 20)]
    assert shard_bounds(20, 3, 1) == [(0, 6), (6, 13), (13, 20)]
    bounds = shard_bounds(20, 8, 4)  # 5 batches for 8 shards: three get nothing
    assert [b for b in bounds if b[0] < b[1]] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]
    assert sum(stop - start for start, stop in bounds) == 20
    for n, count, block in ((1000, 7, 32), (5, 2, 8), (64, 4, 16)):
        cuts = shard_bounds(n, count, block)
        assert cuts[0][0] == 0 and cuts[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))
        assert all(start % block == 0 for start, stop in cuts if start < n)


def test_shard_spec_parsing_and_refusals():
    assert Shard.parse(" 1/4 ") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
    for bad in ("4/4", "1of4", "-1/2", "0/0"):
        with pytest.raises(StoreError):
            Shard.parse(bad)


def test_shards_then_merge_equal_the_single_process_store(data, tmp_path):
    store = tmp_path / "cache"
    parts = [run_shard(data, store, Shard(i, 2)) for i in range(2)]
    assert [p.rows for p in parts] == [9, 11] and all(p.computed == p.rows for p in parts)
    path = store_path(store, "sipakmed", MODEL)
    assert not path.exists()
    result = merge_shards(path)
    assert result.merged and result.rows == 20 and result.shards == 2
    merged = load_features(path)
    assert_same_store(merged, data[2])
    assert merged.provenance["sharding"]["count"] == 2
    assert not shards_dir(path).exists()
    again = merge_shards(path)
    assert not again.merged and again.rows == 20


def test_more_shards_than_batches_and_cache_hit_on_every_shard(data, tmp_path, monkeypatch):
    store = tmp_path / "cache"
    results = [run_shard(data, store, Shard(i, 8), batch_size=4) for i in range(8)]
    assert sorted(r.rows for r in results) == [0, 0, 0, 4, 4, 4, 4, 4]
    path = store_path(store, "sipakmed", MODEL)
    merge_shards(path)
    np.testing.assert_allclose(load_features(path).X, data[2].X, rtol=1e-5, atol=1e-5)

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not build the model")

    import embedcyto.backbones.loaders

    monkeypatch.setattr(embedcyto.backbones.loaders, "build_backbone", no_model)
    hit = run_shard(data, store, Shard(3, 8), batch_size=4)
    assert hit.cache_hit and hit.computed == 0 and hit.path == path


def test_cli_shards_ls_and_merge(data, tmp_path):
    dataset, _, reference = data
    store = tmp_path / "cache"
    runner = CliRunner()
    common = ["extract", "--model", MODEL, "--dataset", "sipakmed", "--root", str(dataset.root),
              "--store", str(store), "--precision", "fp32", "--workers", "0",
              "--batch-size", "3", "--quiet", "--device", "cpu"]
    first = runner.invoke(cli, common + ["--shard", "0/2"])
    assert first.exit_code == 0, first.output
    assert "shard 0/2: 9 rows" in first.output and "embedcyto store merge" in first.output
    listing = runner.invoke(cli, ["store", "ls", "--store", str(store)])
    assert "sharded 9/20 rows" in listing.output
    with pytest.raises(StoreError, match="not merged yet.*embedcyto store merge"):
        load_features(store, "sipakmed", MODEL)
    early = runner.invoke(cli, ["store", "merge", "--dataset", "sipakmed", "--model", MODEL,
                                "--store", str(store)])
    assert early.exit_code == 1 and "Traceback" not in early.output
    assert "shard 1/2 is missing" in early.output
    assert runner.invoke(cli, common + ["--shard", "1/2"]).exit_code == 0
    merged = runner.invoke(cli, ["store", "merge", "--dataset", "sipakmed", "--model", MODEL,
                                 "--store", str(store)])
    assert merged.exit_code == 0 and "merged 2 shards" in merged.output
    assert_same_store(load_features(store_path(store, "sipakmed", MODEL)), reference)
    bad = runner.invoke(cli, common + ["--shard", "2/2"])
    assert bad.exit_code == 1 and "numbered from 0" in bad.output


def test_merge_names_unfinished_and_disagreeing_shards(data, tmp_path):
    dataset, split_dir, _ = data
    store = tmp_path / "cache"
    path = store_path(store, "sipakmed", MODEL)
    run_shard(data, store, Shard(0, 3))
    run_shard(data, store, Shard(2, 3), precision="bf16")
    card = get_card(MODEL)
    provenance = ex.build_provenance(
        dataset, card, None, "float32", split_hash=dataset_split_hash(dataset, split_dir),
        device="cpu", config=config())
    with open_shard_writer(path, dataset=dataset, provenance=provenance,
                           embed_dim=card.embed_dim, shard=Shard(1, 3), block=3) as writer:
        rows = writer.pending_rows()[:3]
        writer.write(rows, np.zeros((3, card.embed_dim), dtype=np.float32))  # then "killed"
    with pytest.raises(StoreError) as err:
        merge_shards(path)
    message = str(err.value)
    assert "shard 1/3 is unfinished (3/6 rows done)" in message
    assert "shard 2/3 was made from other inputs than shard 0/3" in message
    assert "precision" in message
    assert not path.exists()


def test_merge_refuses_mixed_runs_other_batch_sizes_and_nothing(data, tmp_path):
    store = tmp_path / "cache"
    path = store_path(store, "sipakmed", MODEL)
    with pytest.raises(StoreError, match="no shards"):
        merge_shards(path)
    run_shard(data, store, Shard(0, 2), batch_size=3)
    run_shard(data, store, Shard(1, 2), batch_size=4)
    with pytest.raises(StoreError, match=r"shard 1/2 covers rows 8..20 .*implies 9..20 .*`batch_size=3`"):
        merge_shards(path)
    run_shard(data, store, Shard(0, 3))
    with pytest.raises(StoreError, match=r"different runs \(2, 3 shards\).*`count=N`"):
        merge_shards(path)
    with pytest.raises(StoreError, match="shard 1/3 is missing"):
        merge_shards(path, count=3)


def test_a_stale_merged_store_is_refused_by_shards_and_merge(data, tmp_path):
    store = tmp_path / "cache"
    for i in range(2):
        run_shard(data, store, Shard(i, 2))
    path = store_path(store, "sipakmed", MODEL)
    merge_shards(path)
    with pytest.raises(StaleStoreError, match="precision"):
        run_shard(data, store, Shard(0, 2), precision="bf16")
    for i in range(2):
        run_shard(data, store, Shard(i, 2), precision="bf16", force=True)
    with pytest.raises(StaleStoreError, match="`force=True`"):
        merge_shards(path)
    merged = CliRunner().invoke(cli, ["store", "merge", "--dataset", "sipakmed", "--model",
                                      MODEL, "--store", str(store)])
    assert merged.exit_code == 1 and "; pass --force to replace it" in merged.output
    assert merge_shards(path, force=True).merged
    assert load_features(path).provenance["precision"] == "bfloat16"


def test_a_killed_shard_resumes_and_the_merge_is_complete(data, tmp_path):
    dataset, split_dir, _ = data
    store = tmp_path / "cache"
    path = store_path(store, "sipakmed", MODEL)
    kill_extraction_after(2, partial_dir(part_path(path, Shard(1, 2))), root=dataset.root,
                          split_dir=split_dir, store=store, model=MODEL, shard="1/2")
    assert not part_path(path, Shard(1, 2)).exists()
    run_shard(data, store, Shard(0, 2), batch_size=2)
    with pytest.raises(StoreError, match="shard 1/2 is unfinished"):
        merge_shards(path)
    resumed = run_shard(data, store, Shard(1, 2), batch_size=2)
    assert resumed.resumed >= 4 and resumed.computed == 10 - resumed.resumed
    merge_shards(path)
    single = ex.extract_features(dataset, MODEL, store_dir=tmp_path / "single",
                                 split_dir=split_dir, config=config(batch_size=2))
    merged = load_features(path)
    assert merged.provenance["rows_resumed"] == resumed.resumed
    assert_same_store(merged, load_features(single.path))


def test_rank_env_from_torchrun_variables():
    assert RankEnv.from_env({}) is None
    assert RankEnv.from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    env = RankEnv.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank) == (1, 2, 1)
    assert env.device("cpu") == "cpu"
    with pytest.raises(EmbedcytoError, match="torchrun"):
        RankEnv.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(EmbedcytoError, match="integers"):
        RankEnv.from_env({"RANK": "x", "WORLD_SIZE": "2"})


def torchrun(args, store, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "embedcyto", "extract", *args,
               "--store", str(store)]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # two torchrun ranks and a single process; test_a_killed_shard_resumes keeps the shards fast
def test_torchrun_two_ranks_equal_the_single_process_store(data, tmp_path):
    dataset, _, _ = data
    store = tmp_path / "cache"
    args = ["--model", MODEL, "--dataset", "sipakmed", "--root", str(dataset.root),
            "--precision", "fp32", "--workers", "0", "--batch-size", "3", "--quiet"]
    first = torchrun(args, store)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("20 rows (2 ranks), 20 computed") == 1  # printed by rank 0
    path = store_path(store, "sipakmed", MODEL)
    merged = load_features(path)
    assert merged.provenance["sharding"]["count"] == 2
    single = ex.extract_features(
        open_dataset("sipakmed", dataset.root, split_dir=store / "sipakmed"), MODEL,
        store_dir=tmp_path / "single", split_dir=store / "sipakmed", config=config())
    assert_same_store(merged, load_features(single.path))
    before = path.stat().st_mtime_ns
    second = torchrun(args, store)
    assert second.returncode == 0 and "cache hit" in second.stdout
    assert path.stat().st_mtime_ns == before
    stale = torchrun([a if a != "fp32" else "bf16" for a in args], store)
    assert stale.returncode != 0
    errors = [line for line in stale.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2 and all("precision" in e and "--force" in e for e in errors)
    assert not own_frames(stale.stderr)  # only torchrun's own trace
