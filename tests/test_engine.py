"""The training recipe (config merging, schedule, loss, partial fine-tuning) and the loops: fit on real images, keep
the best validation epoch, and resume an interrupted run to exactly the weights of an uninterrupted one."""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrcore import engine, metrics
from cxrcore.data import Dataset, load_dataset
from cxrcore.engine import RESUME_FILE, Prepared, TrainConfig, fit, freeze_all_but, lr_factor, make_loss
from cxrcore.zoo import create_model, get_spec

HISTORY_KEYS = ["epoch", "lr", "train_loss", "val_loss", "val_acc", "val_sensitivity", "val_specificity", "val_auc",
                "epoch_seconds"]


@pytest.fixture(scope="module")
def small(data_dir) -> Dataset:
    """The first 64/48/48 real NIH images at 64 px."""
    return load_dataset("nih14-local", 64).subset({"train": 64, "val": 48, "test": 48})


def synthetic(task: str = metrics.TASK_MULTILABEL, n: int = 20, labels: int = 3) -> Dataset:
    rng = np.random.default_rng(0)
    if task == metrics.TASK_MULTILABEL:
        y = (rng.uniform(size=(n, labels)) < [0.5, 0.1, 0.0][:labels]).astype(np.float32)
    else:
        y = rng.integers(0, labels, (n, 1)).astype(np.float32)
    images = {s: torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8) for s in ("train", "val", "test")}
    return Dataset("synthetic", 16, task, [f"l{k}" for k in range(labels)], images,
                   {s: y.copy() for s in ("train", "val", "test")}, "memory", "none")


def fresh(model_id: str = "vanilla_cnn", seed: int = 0):
    torch.manual_seed(seed)
    return create_model(model_id, 14, 1, 64)


# ---- the recipe ----------------------------------------------------------------------------------------------------

def test_for_model_merges_defaults_zoo_and_overrides():
    spec = get_spec("vit_b16")
    cfg = TrainConfig.for_model(spec)
    assert cfg == TrainConfig(**spec.hparams) and cfg.pos_weight == 10.0
    assert TrainConfig.for_model(get_spec("vgg16")).patience == 0  # a zoo override of a default (its CPU budget)
    cfg = TrainConfig.for_model(spec, epochs=7, lr=None, pos_weight=None, seed=3, not_a_field=1)
    assert cfg.epochs == 7 and cfg.seed == 3  # overrides beat the zoo
    assert cfg.lr == TrainConfig().lr and cfg.pos_weight == spec.hparams["pos_weight"]  # None is "not given"
    base = TrainConfig.for_model(get_spec("medmnist_baseline"))
    assert (base.optimizer, base.schedule, base.batch_size, base.augment, base.init) == ("adam", "step", 128, False,
                                                                                        "random")


def test_from_scratch_overrides_apply_only_to_a_scratch_start():
    spec = get_spec("resnet18")
    assert TrainConfig.for_model(spec).lr == TrainConfig().lr  # ImageNet-initialised: the fine-tuning recipe
    scratch = TrainConfig.for_model(spec, scratch=True)
    assert (scratch.lr, scratch.epochs, scratch.patience) == tuple(spec.scratch_hparams[k]
                                                                   for k in ("lr", "epochs", "patience"))
    assert TrainConfig.for_model(spec, scratch=True, lr=5e-4).lr == 5e-4  # the caller still wins


def test_key_is_stable_and_follows_every_field():
    cfg = TrainConfig()
    assert cfg.key() == TrainConfig().key() and len(cfg.key()) == 12 and int(cfg.key(), 16) >= 0
    changes = {"lr": 2e-4, "epochs": 13, "pos_weight": "balanced", "augment": False, "seed": 1, "init": "random",
               "input_size": 96, "freeze_all_but": 2}
    keys = {name: dataclasses.replace(cfg, **{name: value}).key() for name, value in changes.items()}
    assert len(set(keys.values()) | {cfg.key()}) == len(changes) + 1


def schedule(**kw) -> TrainConfig:
    return TrainConfig(epochs=10, warmup_epochs=1, **kw)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = schedule()
    assert lr_factor(0, cfg) == pytest.approx(1e-3) and lr_factor(0.5, cfg) == pytest.approx(0.5, abs=2e-3)
    assert lr_factor(1, cfg) == pytest.approx(1.0)
    assert lr_factor(5.5, cfg) == pytest.approx(0.5)  # half way through the cosine
    assert lr_factor(10, cfg) == pytest.approx(0.0, abs=1e-12) and lr_factor(12, cfg) == pytest.approx(0.0, abs=1e-12)
    after = [lr_factor(e, cfg) for e in np.linspace(1, 10, 50)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    warm = [lr_factor(e, cfg) for e in np.linspace(0, 1, 20, endpoint=False)]
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_step_schedule_is_medmnists_tenfold_drops():
    cfg = TrainConfig(epochs=100, schedule="step")
    assert [lr_factor(e, cfg) for e in (0, 49.9, 50, 74.9, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant_schedule_after_warmup():
    cfg = schedule(schedule="constant")
    assert lr_factor(0.5, cfg) < 1 and all(lr_factor(e, cfg) == 1.0 for e in (1, 3.3, 9.9))
    assert lr_factor(0, dataclasses.replace(cfg, warmup_epochs=0)) == 1.0


def test_loss_with_a_fixed_positive_weight():
    data = synthetic()
    loss = make_loss(data, TrainConfig(pos_weight=10.0))
    zeros = torch.zeros(4, 3)
    assert loss(zeros, torch.ones(4, 3)).item() == pytest.approx(10 * math.log(2), rel=1e-6)
    assert loss(zeros, torch.zeros(4, 3)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_balanced_positive_weight_is_negatives_over_positives_per_label():
    data = synthetic()
    y = data.labels["train"]
    pos = y.sum(0)
    assert pos[0] > 0 and pos[2] == 0  # the last label has no positives: its weight is capped at n / 1
    expected = torch.tensor((len(y) - np.maximum(pos, 1)) / np.maximum(pos, 1), dtype=torch.float32)
    logits, target = torch.randn(6, 3), torch.from_numpy(y[:6])
    got = make_loss(data, TrainConfig(pos_weight="balanced"))(logits, target)
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(logits, target, pos_weight=expected))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_single_label_tasks_use_cross_entropy(smoothing):
    data = synthetic(metrics.TASK_BINARY, labels=2)
    logits, y = torch.randn(5, 2), torch.from_numpy(data.labels["train"][:5])
    got = make_loss(data, TrainConfig(label_smoothing=smoothing, pos_weight=10.0))(logits, y)
    torch.testing.assert_close(got, F.cross_entropy(logits, y[:, 0].long(), label_smoothing=smoothing))


@pytest.mark.parametrize("model_id, n, expected", [
    ("resnet18", 0, {"fc"}),
    ("resnet18", 1, {"layer4", "fc"}),
    ("resnet18", 2, {"layer3", "layer4", "fc"}),
    ("densenet121", 1, {"features.denseblock4", "features.norm5", "classifier"}),
    ("vit_scratch", 1, {"blocks.5", "norm", "head"}),
    ("efficientnet_lite0", 1, {"blocks.6", "conv_head", "bn2", "classifier"}),
    ("vanilla_cnn", 0, {"head"}),
    ("vanilla_cnn", 1, {"features.2", "head"}),  # the last conv block and the head
    ("cnn_deep", 2, {"features.3", "features.4", "head"}),
])
def test_freeze_all_but_trains_only_the_last_groups_and_the_head(model_id, n, expected):
    model = create_model(model_id, 14, 1, 64)
    freeze_all_but(model, n)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    owners = {next(e for e in expected if name == e or name.startswith(e + ".")) for name in trainable
              if any(name == e or name.startswith(e + ".") for e in expected)}
    assert trainable and owners == expected, sorted(trainable)[:5]
    assert all(any(name.startswith(e + ".") for e in expected) for name in trainable), sorted(trainable)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(not any(name.startswith(e + ".") for e in expected) for name in frozen)
    opt = engine.make_optimizer(model, TrainConfig())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)


def test_optimizer_choice():
    model = create_model("cnn_small", 14, 1, 64)
    assert isinstance(engine.make_optimizer(model, TrainConfig(optimizer="adam")), torch.optim.Adam)
    opt = engine.make_optimizer(model, TrainConfig(lr=3e-4, weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 3e-4


def test_probabilities_follow_the_task():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    torch.testing.assert_close(engine.to_probs(logits, metrics.TASK_MULTILABEL), torch.sigmoid(logits))
    torch.testing.assert_close(engine.to_probs(logits, metrics.TASK_MULTICLASS), torch.softmax(logits, 1))
    assert engine.to_probs(logits, metrics.TASK_BINARY).sum().item() == pytest.approx(1)


def test_single_process_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    d = engine.Dist.from_env()
    assert (d.rank, d.world, d.main) == (0, 1, True) and not engine.Dist(1, 2).main


# ---- prediction ----------------------------------------------------------------------------------------------------

def test_predict_is_batch_size_independent_and_reports_progress(small):
    model = fresh()
    prep = Prepared(64, 0.5, 0.5, 1)
    seen = []
    a = engine.predict(model, small.images["val"], prep, small.task, batch_size=7, progress=seen.append)
    b = engine.predict(model, small.images["val"], prep, small.task)
    assert a.shape == (48, 14) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert len(seen) == math.ceil(48 / 7) and seen[-1] == 1.0 and seen == sorted(seen)


def test_channels_last_prep_gives_the_same_numbers(small):
    model = fresh().eval()
    plain = engine.predict(model, small.images["val"], Prepared(64, 0.5, 0.5, 1), small.task)
    model.to(memory_format=torch.channels_last)
    fast = engine.predict(model, small.images["val"], Prepared(64, 0.5, 0.5, 1, channels_last=True), small.task)
    np.testing.assert_allclose(fast, plain, atol=1e-5)


def test_evaluate_reports_medmnist_metrics_of_its_probabilities(small):
    prep = Prepared(64, 0.5, 0.5, 1)
    cfg = TrainConfig()
    ev = engine.evaluate(fresh(), small, "val", prep, make_loss(small, cfg))
    assert set(ev) == {"loss", "auc", "acc", "sensitivity", "specificity", "probs"}
    y = small.labels["val"]
    assert ev["auc"] == pytest.approx(metrics.get_auc(y, ev["probs"]))
    assert ev["acc"] == pytest.approx(metrics.get_acc(y, ev["probs"]))
    expected_loss = make_loss(small, cfg)(torch.logit(torch.from_numpy(ev["probs"]).double()).float(),
                                          torch.from_numpy(y))
    assert ev["loss"] == pytest.approx(expected_loss.item(), rel=1e-3)


def test_prepared_for_reads_the_card():
    card = {"input_size": 96, "normalisation": [0.5, 0.5], "dataset": {"channels": 1}}
    prep = engine.prepared_for(card)
    assert (prep.input_size, prep.mean, prep.std, prep.in_chans, prep.precision) == (96, 0.5, 0.5, 1, "fp32")
    assert tuple(prep(torch.zeros(2, 1, 64, 64, dtype=torch.uint8)).shape) == (2, 1, 96, 96)


# ---- fit -----------------------------------------------------------------------------------------------------------

def config(**kw) -> TrainConfig:
    return TrainConfig.for_model(get_spec(kw.pop("model_id", "vanilla_cnn")), **{"batch_size": 16, **kw})


def test_fit_on_real_images_keeps_the_best_validation_epoch(small, tmp_path):
    spec, cfg = get_spec("vanilla_cnn"), config(epochs=2, precision="bf16")
    model = fresh()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    events = []
    res = fit(model, spec, small, cfg, tmp_path, progress=events.append)
    assert [list(r) for r in res.history] == [HISTORY_KEYS] * 2 and [r["epoch"] for r in res.history] == [1, 2]
    assert all(math.isfinite(v) for r in res.history for v in r.values())
    aucs = [r["val_auc"] for r in res.history]
    assert res.best_epoch == int(np.argmax(aucs)) + 1 and res.epochs_run == 2 and not res.stopped_early
    assert res.resumed_from is None and res.train_seconds > 0 and res.channels_last
    steps = [e for e in events if "step" in e]
    assert len(steps) == 2 * 4 and {e["steps"] for e in steps} == {4}  # 64 images / batch 16
    assert [e["epoch"] for e in events if e.get("done")] == [0, 1]
    assert any(not torch.equal(start[k], v) for k, v in res.model.state_dict().items())
    # the returned weights are the best epoch's: evaluating them in the training precision, in which the epoch was
    # chosen, gives that epoch's validation AUC
    assert res.precision == "bf16" and res.bf16
    prep = Prepared(64, *spec.norm, 1, channels_last=res.channels_last, precision=res.precision)
    again = engine.evaluate(res.model, small, "val", prep, make_loss(small, cfg))
    assert again["auc"] == pytest.approx(aucs[res.best_epoch - 1], abs=1e-9)
    state = torch.load(tmp_path / RESUME_FILE, weights_only=True)
    assert state["epoch"] == 1 and state["config_key"] == cfg.key() and state["model_id"] == "vanilla_cnn"
    best = torch.load(tmp_path / engine.BEST_FILE, weights_only=True)  # the best weights live in their own file
    assert best["epoch"] == res.best_epoch and not {"best", "best_state"} & set(state)  # no second copy in the state
    for k, v in res.model.state_dict().items():
        assert torch.equal(best["model"][k], v.cpu()), k
    assert res.settings["threads"] == torch.get_num_threads() and res.settings["hardware_class"].startswith("cpu")
    engine.clear_resume(tmp_path)
    assert not (tmp_path / RESUME_FILE).exists() and not (tmp_path / engine.BEST_FILE).exists()


def test_fit_stops_early_when_validation_stops_improving(small, tmp_path):
    """lr 0 on a model without BatchNorm: the weights, so the validation AUC, never change after epoch 1."""
    cfg = config(model_id="vit_scratch", epochs=6, patience=2, lr=0.0)
    res = fit(fresh("vit_scratch"), get_spec("vit_scratch"), small, cfg, tmp_path)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1
    assert len({r["val_auc"] for r in res.history}) == 1


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_at(epoch: int):
    def progress(ev: dict) -> None:
        if ev["epoch"] == epoch and ev.get("step") == 1:
            raise Interrupt  # like Ctrl-C (or a killed job) part way through that epoch
    return progress


@pytest.mark.parametrize("model_id", ["vanilla_cnn", "cnn_deep"])  # cnn_deep has dropout: the RNG state must resume
def test_interrupted_fit_resumes_to_the_uninterrupted_weights(small, tmp_path, model_id):
    spec, cfg = get_spec(model_id), config(model_id=model_id, epochs=3, patience=0)
    full = fit(fresh(model_id), spec, small, cfg, tmp_path / "full")
    with pytest.raises(Interrupt):
        fit(fresh(model_id), spec, small, cfg, tmp_path / "run", progress=interrupt_at(1))  # second epoch's 1st step
    assert torch.load(tmp_path / "run" / RESUME_FILE, weights_only=True)["epoch"] == 0
    res = fit(fresh(model_id, seed=1), spec, small, cfg, tmp_path / "run")  # another start: the file must win
    assert res.resumed_from == 1 and len(res.history) == 3 and [r["epoch"] for r in res.history] == [1, 2, 3]
    # Exactly the same run: the data order is reseeded per epoch, augmentation uses that generator, dropout the global
    # RNG whose state is in the resume file, and CPU kernels are deterministic at a fixed thread count.
    drop = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert drop(res.history) == drop(full.history) and res.best_epoch == full.best_epoch
    for k, v in full.model.state_dict().items():
        assert torch.equal(res.model.state_dict()[k], v), k


def test_resume_file_of_another_recipe_is_ignored(small, tmp_path):
    spec = get_spec("vanilla_cnn")
    with pytest.raises(Interrupt):
        fit(fresh(), spec, small, config(epochs=2), tmp_path, progress=interrupt_at(1))
    res = fit(fresh(), spec, small, config(epochs=2, lr=5e-4), tmp_path)
    assert res.resumed_from is None and len(res.history) == 2


def test_finished_run_resumed_again_trains_no_more(small, tmp_path):
    spec, cfg = get_spec("vanilla_cnn"), config(epochs=1)
    first = fit(fresh(), spec, small, cfg, tmp_path)
    again = fit(fresh(seed=5), spec, small, cfg, tmp_path)
    assert again.resumed_from == 1 and again.history == first.history
    for k, v in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)


def test_partial_fine_tune_leaves_frozen_weights_untouched(small, tmp_path):
    spec, cfg = get_spec("resnet18"), config(model_id="resnet18", epochs=1, freeze_all_but=1, init="random")
    model = fresh("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(model, spec, small, cfg, tmp_path)
    after = res.model.state_dict()
    assert torch.equal(after["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    assert not torch.equal(after["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])


# ---- devices and precision (no CUDA here: stand-ins) ---------------------------------------------------------------

def test_each_rank_trains_on_its_own_gpu(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert engine.device(engine.Dist(rank=5, world=8, local_rank=1)) == torch.device("cuda", 1)
    assert current == [1]  # made current, so NCCL and default allocations do not all land on cuda:0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.device(engine.Dist(rank=5, world=8, local_rank=1)) == torch.device("cpu")


def test_dist_reads_local_rank_and_ddp_gets_device_ids(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert engine.Dist.from_env() == engine.Dist(0, 1, 3)
    seen = {}
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                        lambda model, **kw: seen.setdefault(str(len(seen)), kw))
    engine.wrap_ddp(torch.nn.Linear(2, 2), torch.device("cuda", 3))
    engine.wrap_ddp(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert seen == {"0": {"device_ids": [3]}, "1": {"device_ids": None}}


def test_precision_is_resolved_explicitly(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    for has in (True, False):
        monkeypatch.setattr(engine, "cpu_has_bf16", lambda has=has: has)
        assert engine.resolve_precision("auto", cpu) == ("bf16" if has else "fp32")
    for has in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda has=has: has)
        assert engine.resolve_precision("auto", gpu) == ("bf16" if has else "fp16")  # fp16 (with a scaler) on old GPUs
    assert engine.resolve_precision("fp32", gpu) == "fp32"
    with pytest.warns(RuntimeWarning, match="emulated"):  # cpu_has_bf16 is False here
        assert engine.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16 training needs a GPU"):
        engine.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="choose one of"):
        engine.resolve_precision("tf32", cpu)


def test_autocast_follows_the_precision():
    w = torch.randn(4, 4)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with Prepared(8, 0.5, 0.5, 1, precision=precision).autocast(torch.device("cpu")):
            assert (w @ w).dtype == dtype


def test_the_training_step_makes_no_tensor_off_the_batch_device():
    """The whole step (preprocess, augmentation with a CPU or no generator, forward, loss, backward, AdamW) on 'meta'
    tensors: any tensor built on the CPU meets the batch and fails, as it would on a GPU."""
    model = create_model("resnet18", 3, 1, 32).to("meta")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prep = Prepared(32, 0.5, 0.5, 1, channels_last=True)
    loss_fn = lambda logits, y: F.binary_cross_entropy_with_logits(logits, y)  # noqa: E731
    step = engine.TrainStep(model, opt, loss_fn, prep, engine.Augment(), torch.amp.GradScaler("cpu", enabled=False))
    x, y = torch.empty(4, 1, 28, 28, dtype=torch.uint8, device="meta"), torch.empty(4, 3, device="meta")
    for gen in (None, torch.Generator().manual_seed(0)):
        assert step(x, y, gen).device == x.device


def test_the_training_step_goes_through_the_gradient_scaler():
    calls = []

    class Scaler:  # stands in for fp16's GradScaler, which needs CUDA
        def scale(self, loss):
            calls.append("scale")
            return loss * 1.0

        def step(self, opt):
            calls.append("step")
            opt.step()

        def update(self):
            calls.append("update")

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    before = model[1].weight.detach().clone()
    step = engine.TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
                            lambda logits, y: F.mse_loss(logits, y), Prepared(2, 0.0, 1.0, 1), None, Scaler())
    step(torch.full((3, 1, 2, 2), 255, dtype=torch.uint8), torch.zeros(3, 2), None)
    assert calls == ["scale", "step", "update"] and not torch.equal(model[1].weight, before)


def test_splits_stay_on_the_gpu_only_when_they_fit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (1000, 4000))
    gpu = torch.device("cuda", 0)
    assert engine.fits_on_device(500, gpu) and not engine.fits_on_device(501, gpu)  # half the free memory at most
    assert not engine.fits_on_device(1, torch.device("cpu"))
    rows = torch.arange(12, dtype=torch.uint8).view(6, 2)
    on_cpu = engine.DeviceRows(rows, torch.device("cpu"))
    assert on_cpu.resident and on_cpu.rows.data_ptr() == rows.data_ptr()  # a memory-mapped split is not copied
    assert torch.equal(on_cpu.take(torch.tensor([4, 1])), rows[[4, 1]])


def test_shards_cover_every_row_once_in_order():
    for n, world in ((47, 2), (5, 4), (3, 4), (8, 8)):
        parts = [list(range(n))[engine.Dist(r, world).shard(n)] for r in range(world)]
        assert sum(parts, []) == list(range(n)) and max(map(len, parts)) == math.ceil(n / world)


def test_the_loss_is_read_back_every_few_steps_not_every_step(small, tmp_path, monkeypatch):
    reads = []  # host reads the engine itself makes (each one waits for the GPU); the optimiser's own are elsewhere
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: (sys._getframe(1).f_code.co_filename == engine.__file__
                                                         and reads.append(1)) or item(t))
    events = []
    fit(fresh(), get_spec("vanilla_cnn"), small, config(epochs=1, batch_size=2), tmp_path, progress=events.append)
    steps = [e for e in events if "step" in e]
    assert len(steps) == 32 and all(math.isfinite(e["loss"]) for e in steps)
    # step 1, step 26 (LOSS_EVERY = 25) and the last for the bar, the epoch's mean, the validation loss
    assert engine.LOSS_EVERY == 25 and len(reads) == 5


# ---- resume files --------------------------------------------------------------------------------------------------

def test_best_weights_are_written_only_when_they_improve(small, tmp_path, monkeypatch):
    written = []
    save = engine._save
    monkeypatch.setattr(engine, "_save", lambda obj, path: written.append(path.name) or save(obj, path))
    cfg = config(model_id="vit_scratch", epochs=3, patience=0, lr=0.0)  # val AUC never changes: epoch 1 stays best
    fit(fresh("vit_scratch"), get_spec("vit_scratch"), small, cfg, tmp_path)
    assert written == [engine.BEST_FILE, RESUME_FILE, RESUME_FILE, RESUME_FILE]


def test_a_corrupt_resume_file_is_set_aside_and_training_restarts(small, tmp_path):
    spec, cfg = get_spec("vanilla_cnn"), config(epochs=1)
    full = fit(fresh(), spec, small, cfg, tmp_path / "full")
    run = tmp_path / "run"
    run.mkdir()
    (run / RESUME_FILE).write_bytes(b"PK\x03\x04 half a zip file")
    with pytest.warns(RuntimeWarning, match=rf"{RESUME_FILE}.*set aside as .*{RESUME_FILE}.corrupt.*from scratch"):
        res = fit(fresh(), spec, small, cfg, run)
    assert res.resumed_from is None and (run / (RESUME_FILE + ".corrupt")).exists()
    drop = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert drop(res.history) == drop(full.history)
    assert torch.load(run / RESUME_FILE, weights_only=True)["epoch"] == 0  # a good state replaced the bad one


def test_best_weights_that_do_not_match_the_state_are_reported(small, tmp_path):
    spec, cfg = get_spec("vanilla_cnn"), config(epochs=1)
    fit(fresh(), spec, small, cfg, tmp_path)
    (tmp_path / engine.BEST_FILE).unlink()
    with pytest.warns(RuntimeWarning, match=engine.BEST_FILE):
        assert fit(fresh(), spec, small, cfg, tmp_path).resumed_from is None


def test_a_full_disk_stops_with_a_clear_message_and_no_partial_file(small, tmp_path, monkeypatch):
    def full_disk(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.torch, "save", full_disk)
    with pytest.raises(engine.StateWriteError, match=r"could not write .*\.best\.pt .*No space left.*MB free"):
        fit(fresh(), get_spec("vanilla_cnn"), small, config(epochs=1), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_compile_wraps_the_training_forward_and_is_recorded(small, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(engine.torch, "compile", lambda m: compiled.append(m) or m)
    res = fit(fresh(), get_spec("vanilla_cnn"), small.subset({"train": 16, "val": 48, "test": 8}),
              config(epochs=1, compile=True), tmp_path)
    assert len(compiled) == 1 and res.settings["compile"] and res.settings["global_batch_size"] == 16


def test_sync_batchnorm_on_cpu_processes_is_refused_clearly(small, tmp_path):
    with pytest.raises(ValueError, match="SyncBatchNorm runs on GPUs only"):
        fit(fresh(), get_spec("vanilla_cnn"), small, config(epochs=1, sync_batchnorm=True), tmp_path,
            dist=engine.Dist(0, 2))
