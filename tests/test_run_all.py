"""The training CLI end to end on the real data: what a quick run writes, that a second run skips up-to-date models,
clear failures, and DistributedDataParallel under torchrun (2 CPU processes, gloo)."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cxrcore import checkpoints
from cxrcore.data import REPO_ROOT, load_dataset
from cxrcore.zoo import list_models

RUN_ALL = str(REPO_ROOT / "train" / "run_all.py")
QUICK = ["--quick", "--models", "vanilla_cnn", "cnn_small", "--ensemble", "vanilla_cnn", "cnn_small"]
QUICK_COUNTS = {"train": 160, "val": 80, "test": 80}  # run_all.QUICK_SUBSET


def env(**extra) -> dict:
    # one thread per process: these machines train in the background, and spinning OpenMP threads fight over 2 cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **extra}


def run(*args: str, timeout: int = 600, **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUN_ALL, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, env=env(**env_extra))


def torchrun(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), script, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env())


def rank_results(folder: Path) -> list[dict]:
    """What each rank wrote to its own file: printed lines from two processes can interleave mid-line (CI once got
    'RESULTRESULT {rank 0}' then '{rank 1}' on the next line)."""
    return sorted((json.loads(p.read_text()) for p in folder.glob("result-*.json")), key=lambda r: r["rank"])


# ---- quick failures ------------------------------------------------------------------------------------------------

def test_list_prints_every_id_one_a_line():
    res = run("--list", timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == list_models()


def test_unknown_model_id_fails_before_training_and_names_it(tmp_path):
    res = run("--quick", "--models", "vanilla_cnn", "resnet19", "--out", str(tmp_path), timeout=120)
    assert res.returncode != 0
    assert "unknown model id 'resnet19'" in res.stderr and "resnet18" in res.stderr
    assert not any(tmp_path.iterdir())  # the typo stopped it before vanilla_cnn trained


def test_missing_dataset_exits_2_with_the_way_to_fix_it(tmp_path):
    res = run("--quick", "--models", "vanilla_cnn", "--out", str(tmp_path / "out"), timeout=120,
              CXR_DATA_DIR=str(tmp_path))
    assert res.returncode == 2
    assert "error: nih14-local at 64 px needs" in res.stderr and "CXR_DATA_DIR" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


# ---- a quick run end to end ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("quick")
    res = run(*QUICK, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["vanilla_cnn", "cnn_small"])
def test_quick_run_writes_a_complete_card(quick, model_id):
    out, res = quick
    card = checkpoints.read_card(out / model_id)
    assert card.id == model_id and card.dataset.name == "nih14-local" and card.dataset.size == 64
    assert card.dataset.counts == QUICK_COUNTS and card.task == "multi-label, binary-class"
    assert card.init.kind == "random" and card.hparams["epochs"] == 1 and card.epochs_run == 1
    assert card.world_size == 1 and card.best_epoch == 1 and len(card.label_names) == 14
    for split in ("val", "test"):
        m = card.metrics.split(split)
        assert 0 <= m.auc_macro <= 1 and m.n == QUICK_COUNTS[split] and len(m.auc_macro_ci) == 2
    assert len(card.thresholds["youden_val"]) == 14
    assert "--quick" in card.rebuild_command and card.weights_sha256
    assert card.training_setup["threads"] >= 1 and card.training_setup["hardware_class"] and card.precision
    assert card.training_setup["omp_num_threads"] == "1" and "interop_threads" in card.training_setup
    assert f"{model_id}: 1 epochs" in res.stdout


@pytest.mark.slow
def test_quick_run_reads_the_test_split_once_after_all_training(quick):
    """Training prints held-out figures only; the test split is read in one labelled step after every model (and the
    ensemble) is trained, and each card is stamped."""
    out, res = quick
    lines = res.stdout.splitlines()
    step = lines.index("== test split, read once, after all training (no recipe decision reads it) ==")
    assert not any("test" in ln.lower() for ln in lines[:step]), lines[:step]
    evaluated = [ln for ln in lines[step + 1:] if ln.startswith("test (read once): ")]
    assert sorted(ln.split(": ")[1].rsplit("/", 1)[1] for ln in evaluated) == ["cnn_small", "ensemble", "vanilla_cnn"]
    assert all("patient-level CI" in ln for ln in evaluated)
    for m in ("vanilla_cnn", "cnn_small", "ensemble"):
        assert json.loads((out / m / "card.json").read_text())["test_evaluation"]["at"]


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["vanilla_cnn", "cnn_small", "ensemble"])
def test_quick_run_stores_predictions_for_val_and_test(quick, model_id):
    out, _ = quick
    p = checkpoints.read_predictions(out / model_id)
    # the calibrated probabilities the app serves, the network's own beside them, and each image's patient code
    assert set(p) == {"val_probs", "val_labels", "test_probs", "test_labels", "val_raw_probs", "test_raw_probs",
                      "val_groups", "test_groups"}
    for split in ("val", "test"):
        probs, labels = p[f"{split}_probs"], p[f"{split}_labels"]
        assert p[f"{split}_raw_probs"].shape == probs.shape
        assert probs.shape == labels.shape == (QUICK_COUNTS[split], 14)
        assert np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
        assert set(np.unique(labels)) <= {0.0, 1.0}


@pytest.mark.slow
def test_quick_run_weights_history_and_predictions_agree(quick):
    """The shipped weights, loaded as the app loads them, reproduce the stored test predictions."""
    from cxrcore.inference import load_model

    out, _ = quick
    ck = out / "vanilla_cnn"
    assert checkpoints.read_weights(ck)  # sha256 matches the card
    assert not (ck / ".resume.pt").exists()
    history = checkpoints.read_history(ck)
    assert len(history) == 1 and {"epoch", "train_loss", "val_auc"} <= set(history[0])
    card = checkpoints.read_card(ck)
    assert history[0]["val_auc"] == pytest.approx(card.metrics.val.auc_macro, abs=0.02)
    data = load_dataset("nih14-local", 64).subset(QUICK_COUNTS)
    stored = checkpoints.read_predictions(ck)
    np.testing.assert_array_equal(stored["test_labels"], data.labels["test"])
    np.testing.assert_allclose(load_model(ck).predict(data.images["test"]), stored["test_probs"], atol=0.02)


@pytest.mark.slow
def test_quick_run_writes_tables_and_ensemble(quick):
    out, _ = quick
    with open(out / "benchmarks.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model"] for r in rows) == ["cnn_small", "ensemble", "vanilla_cnn"]
    md = (out / "benchmarks.md").read_text()
    assert md.startswith("| model |") and all(m in md for m in ("vanilla_cnn", "cnn_small", "ensemble"))
    ens = json.loads((out / "ensemble" / "card.json").read_text())
    assert ens["members"] == ["vanilla_cnn", "cnn_small"] and ens["id"] == "ensemble"
    p = {m: checkpoints.read_predictions(out / m) for m in ("vanilla_cnn", "cnn_small", "ensemble")}
    np.testing.assert_allclose(p["ensemble"]["test_probs"], (p["vanilla_cnn"]["test_probs"] +
                                                            p["cnn_small"]["test_probs"]) / 2, atol=1e-6)


@pytest.mark.slow
def test_second_identical_run_skips_up_to_date_models(quick):
    out, _ = quick
    before = {m: (out / m / "model.safetensors").stat().st_mtime_ns for m in ("vanilla_cnn", "cnn_small")}
    res = run(*QUICK, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "vanilla_cnn: up to date, skipped" in res.stdout and "cnn_small: up to date, skipped" in res.stdout
    assert {m: (out / m / "model.safetensors").stat().st_mtime_ns for m in before} == before


@pytest.mark.slow
def test_cross_validation_is_the_default_recipe(tmp_path, data_dir):
    """Without --cv a run is 5-fold cross-validated on train + val (the whole NIH sample, one epoch of the smallest
    model): epochs, calibration and thresholds from the pooled out-of-fold predictions, then the test read once."""
    res = run("--models", "vanilla_cnn", "--epochs", "1", "--ensemble", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    card = checkpoints.read_card(tmp_path / "vanilla_cnn")
    data = load_dataset("nih14-local", 64)
    cv = card.extra["cv"]
    assert cv["k"] == 5 and sum(cv["fold_images"]) == len(data.labels["train"]) + len(data.labels["val"])
    assert card.calibration["fitted_on"] == "oof" and card.metrics.test.n == len(data.labels["test"])
    assert card.extra["test_evaluation"]["patient_level_ci"]
    assert "vanilla_cnn: 5-fold OOF AUC" in res.stdout and "--cv" not in card.rebuild_command
    again = run("--models", "vanilla_cnn", "--epochs", "1", "--ensemble", "--out", str(tmp_path))
    assert "vanilla_cnn: up to date, skipped" in again.stdout
    single = run("--models", "vanilla_cnn", "--epochs", "1", "--ensemble", "--no-cv", "--out", str(tmp_path))
    assert single.returncode == 0 and "vanilla_cnn: up to date" not in single.stdout  # another recipe: retrained
    assert "cv" not in checkpoints.read_card(tmp_path / "vanilla_cnn").extra


@pytest.mark.slow
def test_seeds_train_each_model_again_beside_the_main_one(tmp_path, data_dir):
    out = tmp_path / "run"
    res = run("--quick", "--models", "vanilla_cnn", "--seeds", "2", "--ensemble", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    main = checkpoints.read_card(out / "vanilla_cnn")
    extra = checkpoints.read_card(tmp_path / "run-seeds" / "nih14-local" / "seed1" / "vanilla_cnn")
    assert extra.hparams["seed"] == main.hparams["seed"] + 1 and extra.config_key != main.config_key
    assert extra.metrics.test is not None and main.metrics.test is not None  # both read once, after training
    assert extra.dataset.split_checksum == main.dataset.split_checksum
    assert "vanilla_cnn seed 1: 1 epochs" in res.stdout
    assert [c.id for c in checkpoints.find(out)] == ["vanilla_cnn"]  # the seeds are not models of the tree


# ---- DistributedDataParallel ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_two_processes_train_one_checkpoint(tmp_path, data_dir):
    res = torchrun(RUN_ALL, "--quick", "--models", "vanilla_cnn", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    found = checkpoints.find(tmp_path)
    assert [c.id for c in found] == ["vanilla_cnn"]
    card = found[0].card
    assert card.world_size == 2 and card.epochs_run == 1 and checkpoints.read_weights(found[0].path)
    assert res.stdout.count("vanilla_cnn: 1 epochs") == 1  # only rank 0 reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.csv", "benchmarks.md", "vanilla_cnn"]


RANKS_AGREE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from cxrcore.data import load_dataset
    from cxrcore.engine import Dist, TrainConfig, fit
    from cxrcore.zoo import create_model, get_spec

    dist = Dist.from_env()
    # 65 training images in batches of 32: the last batch holds one image, which two ranks cannot share
    data = load_dataset("nih14-local", 64).subset({"train": 65, "val": 48, "test": 8})
    spec = get_spec("vanilla_cnn")
    cfg = TrainConfig.for_model(spec, epochs=3, batch_size=32, patience=1)
    torch.manual_seed(dist.rank)  # different starts: DDP must broadcast rank 0's weights
    res = fit(create_model("vanilla_cnn", 14, 1, 64), spec, data, cfg, Path(sys.argv[1]), dist=dist)
    first = next(res.model.parameters()).flatten()[:5].tolist()
    Path(sys.argv[2], f"result-{dist.rank}.json").write_text(json.dumps({
        "rank": dist.rank, "val_auc": [r["val_auc"] for r in res.history], "best": res.best_epoch,
        "stopped": res.stopped_early, "w": first}))
""")


@pytest.mark.slow
def test_ddp_ranks_stay_in_step(tmp_path, data_dir):
    """Every rank must evaluate the same model and take the same best-epoch and early-stopping decisions (a rank
    that stops alone leaves the other waiting in an all-reduce), and an uneven last batch must not desynchronise
    them."""
    script = tmp_path / "ranks_agree.py"
    script.write_text(RANKS_AGREE)
    res = torchrun(str(script), str(tmp_path / "work"), str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    results = rank_results(tmp_path)
    assert [r["rank"] for r in results] == [0, 1], res.stdout[-2000:] + res.stderr[-2000:]
    r0, r1 = ({k: v for k, v in r.items() if k != "rank"} for r in results)
    assert r0 == r1


RESUME_DDP = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import numpy as np
    import torch
    from cxrcore.data import load_dataset
    from cxrcore.engine import Dist, Prepared, TrainConfig, evaluate, fit, make_loss
    from cxrcore.zoo import create_model, get_spec

    mode, work = sys.argv[1], Path(sys.argv[2])
    dist = Dist.from_env()
    data = load_dataset("nih14-local", 64).subset({"train": 65, "val": 47, "test": 8})  # 47: shards of 24 and 23
    spec = get_spec("cnn_deep")  # dropout: the RNG state must resume too
    cfg = TrainConfig.for_model(spec, epochs=3, batch_size=16, patience=0)

    def die_in_second_epoch(ev):  # like a killed job: rank 0 dies, torchrun takes rank 1 down
        if ev["epoch"] == 1 and ev.get("step") == 1:
            os._exit(3)

    def train(folder, progress=None):
        torch.manual_seed(0)
        return fit(create_model("cnn_deep", 14, 1, 64), spec, data, cfg, work / folder, progress, dist)

    if mode == "interrupt":
        train("run", die_in_second_epoch)
    res, full = train("run"), train("full")
    prep = Prepared(64, *spec.norm, 1, channels_last=res.channels_last, precision=res.precision)
    sharded = evaluate(res.model, data, "val", prep, make_loss(data, cfg), dist)
    alone = evaluate(res.model, data, "val", prep, make_loss(data, cfg))  # this rank scores every image itself
    drop = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]
    Path(sys.argv[3], f"result-{dist.rank}.json").write_text(json.dumps({
        "rank": dist.rank, "resumed_from": res.resumed_from, "same_history": drop(res.history) == drop(full.history),
        "same_weights": all(torch.equal(v, full.model.state_dict()[k]) for k, v in res.model.state_dict().items()),
        "sharded_probs_diff": float(np.abs(sharded["probs"] - alone["probs"]).max()),
        "sharded_auc": [sharded["auc"], alone["auc"]], "n": len(sharded["probs"]),
        "files": sorted(p.name for p in (work / "run").iterdir())}))
""")


@pytest.mark.slow
def test_ddp_resumes_a_killed_run_and_shards_validation(tmp_path, data_dir):
    """Two gloo processes: a job killed in its second epoch resumes under torchrun to the weights and history of an
    uninterrupted one, and validation scored in two shards and gathered equals one process scoring every image."""
    script = tmp_path / "resume_ddp.py"
    script.write_text(RESUME_DDP)
    killed = torchrun(str(script), "interrupt", str(tmp_path / "work"), str(tmp_path), timeout=300)
    assert killed.returncode != 0 and not rank_results(tmp_path)
    assert (tmp_path / "work" / "run" / ".resume.pt").exists()
    res = torchrun(str(script), "resume", str(tmp_path / "work"), str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    results = rank_results(tmp_path)
    assert [r["rank"] for r in results] == [0, 1], res.stdout[-2000:] + res.stderr[-2000:]
    for r in results:
        assert r["resumed_from"] == 1 and r["same_history"] and r["same_weights"], r
        assert r["n"] == 47 and r["sharded_probs_diff"] < 1e-6 and r["sharded_auc"][0] == pytest.approx(
            r["sharded_auc"][1], abs=1e-9)
        assert r["files"] == [".best.pt", ".resume.pt"]  # rank 0 alone wrote, and no temporary file is left


def test_the_ensemble_rebuild_command_names_the_members_shared_precision(tmp_path):
    """Precision is part of the recipe: an ensemble command without it would retrain fp32 members in auto precision."""
    import dataclasses

    sys.path.insert(0, str(REPO_ROOT / "train"))
    import run_all
    from helpers import fake_checkpoint

    a, b = (fake_checkpoint(tmp_path, m, seed=s) for m, s in (("vanilla_cnn", 1), ("cnn_small", 2)))
    fp32 = [dataclasses.replace(c, card=dataclasses.replace(c.card, precision="fp32")) for c in (a, b)]
    assert run_all.ensemble_command("python train/run_all.py", fp32) == (
        "python train/run_all.py --models vanilla_cnn cnn_small --precision fp32 --ensemble vanilla_cnn cnn_small")
    mixed = [fp32[0], dataclasses.replace(b, card=dataclasses.replace(b.card, precision="bf16"))]
    assert "--precision" not in run_all.ensemble_command("python train/run_all.py", mixed)


def test_a_missing_chest_x_ray_base_is_built_first_by_its_own_command(tmp_path, monkeypatch):
    """A fresh clone has no pretraining bases (their weights are not shipped): retraining a model whose recipe
    starts from one trains the base first, by the command its zoo entry names; a present base is used as it is."""
    import shlex

    sys.path.insert(0, str(REPO_ROOT / "train"))
    import run_all
    from cxrcore.engine import Dist
    from cxrcore.runs import recipe
    from cxrcore.zoo import get_spec

    calls = []
    monkeypatch.setattr(run_all, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.chdir(tmp_path)
    cfg, one = recipe("cnn_deep", precision="fp32"), Dist()
    run_all.build_chest_base("cnn_deep", cfg, one)
    assert calls == [shlex.split(get_spec("cnn_deep").chest_base.train_command("cnn_deep"))[2:]]
    with pytest.raises(checkpoints.CheckpointError, match="build it first"):  # torchrun: one process builds it
        run_all.build_chest_base("cnn_deep", cfg, Dist(rank=0, world=2))
    run_all.build_chest_base("cnn_deep", recipe("cnn_deep", init="random"), one)  # told another start: no base
    (tmp_path / cfg.init).mkdir(parents=True)
    (tmp_path / cfg.init / checkpoints.WEIGHTS).write_bytes(b"")
    run_all.build_chest_base("cnn_deep", cfg, one)
    assert len(calls) == 1
    (tmp_path / cfg.init / checkpoints.WEIGHTS).unlink()
    monkeypatch.setattr(run_all, "main", lambda argv: 2)
    with pytest.raises(checkpoints.CheckpointError, match="could not be built"):
        run_all.build_chest_base("cnn_deep", cfg, one)


def test_a_rebuild_narrows_the_card_command_to_its_own_model_and_seed(tmp_path):
    """benchmarks/rebuild.py reruns a card's command for that model alone, into a scratch folder, in the card's
    precision: never the extra seeds (they would land beside the scratch folder) or the checkpoint tree."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rebuild", REPO_ROOT / "benchmarks" / "rebuild.py")
    rebuild = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rebuild)
    cmd = rebuild.narrowed("python train/run_all.py --models cnn_deep resnet18 --seeds 3 --precision bf16 --cv 5",
                           "cnn_deep", tmp_path, "fp32")
    assert cmd == ["python", "train/run_all.py", "--cv", "5", "--models", "cnn_deep", "--out", str(tmp_path),
                   "--force", "--precision", "fp32"]
