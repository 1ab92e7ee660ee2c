"""Benchmark tables from cards and stored predictions: per-label metrics, histories, prevalence, calibration, and
the published section of BENCHMARKS.md."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import NIH14, fake_checkpoint_root

from cxrcore import benchmarks, metrics, published
from cxrcore.checkpoints import find
from cxrcore.zoo import get_spec


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fake_checkpoint_root(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def nih(root):
    return [c for c in find(root) if c.dataset == "nih14-local"]


def test_binary_split_arrays_are_one_column_per_class(root):
    ck = next(c for c in find(root) if c.dataset == "pneumoniamnist-local")
    y, p = benchmarks.split_arrays(ck.predictions(), "test", ck.card.task)
    assert y.shape == p.shape == (120, 2)
    np.testing.assert_array_equal(y[:, 1], ck.predictions()["test_labels"][:, 0])
    np.testing.assert_array_equal(y.sum(1), 1)


def test_per_label_rows_of_one_card(nih):
    unshipped = next(c for c in nih if c.id == "resnet18")
    rows = benchmarks.per_label_rows(unshipped.card)
    assert [r["label"] for r in rows] == NIH14 and all(0 <= r["auc"] <= 1 for r in rows)


def test_benchmark_tables(nih):
    table = benchmarks.per_label_table(nih, "auc")
    assert [r["label"] for r in table] == NIH14 and set(table[0]) - {"label"} == {c.id for c in nih}
    history = benchmarks.history_rows(nih)
    assert {r["model"] for r in history} == {"vanilla_cnn", "vit_scratch", "resnet18"}  # the ensemble has no history
    prevalence = benchmarks.prevalence_rows(nih[0].card)
    assert len(prevalence) == 3 * 14 and np.allclose([r["share"] for r in prevalence], 0.3)
    rel = benchmarks.reliability_of(nih[0].predictions(), metrics.TASK_MULTILABEL)
    assert 0 <= rel["ece"] <= 1 and sum(rel["count"]) == 120 * 14


@pytest.mark.parametrize("dataset", ["nih14-local", "pneumoniamnist-local"])
def test_benchmarks_md_shows_every_published_table_of_the_task(dataset):
    section = "\n".join(benchmarks.published_section(dataset))
    tables = published.tables(dataset)
    assert tables and all(f"Published (not reproduced here): {t.title}" in section for t in tables)
    assert all(t.source in section for t in tables)
    assert all(t.note in section for t in tables) and "not transcribed" not in section
    assert "| DenseNet-121 | 75.93 | 78.7 | 81.21 | 82.22 |" in section or dataset != "nih14-local"


def test_write_report_lays_prevalence_out_per_label(root, tmp_path):
    benchmarks.write_report(root, tmp_path / "BENCHMARKS.md")
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| label | train | val | test |" in md and "| Hernia | 120 | 24 | 36 |" in md
    assert "Published (not reproduced here): CheXNet" in md


# ---- multi-class tasks and learning curves --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    from helpers import fake_checkpoint

    return fake_checkpoint(tmp_path_factory.mktemp("multiclass"), "cnn_small", "kermany-pneumonia3", seed=5)


def test_multiclass_table1_confusion_matrix_and_per_class_rates(three_class):
    row = benchmarks.table1([three_class])[0]
    test = three_class.card.metrics.test
    assert row["test_f1_macro"] == test.extra["f1_macro"] and row["test_auc"] == pytest.approx(test.extra["auc_ovr"])
    assert {"test_acc", "test_f1_macro", "test_auc"} <= set(benchmarks.table1_columns(three_class.card.task))
    frame = benchmarks.confusion_frame(three_class)
    y = three_class.predictions()["test_labels"][:, 0].astype(int)
    assert [r["true"] for r in frame] == ["normal", "bacterial", "viral"]
    assert [sum(v for k, v in r.items() if k != "true") for r in frame] == np.bincount(y, minlength=3).tolist()
    rates = benchmarks.per_class_rows(three_class)
    assert [r["support"] for r in rates] == np.bincount(y, minlength=3).tolist()
    section = "\n".join(benchmarks.multiclass_section([three_class]))
    assert "cnn_small: test confusion matrix" in section and "| true | normal | bacterial | viral |" in section


def test_multilabel_models_have_no_confusion_section(nih):
    assert benchmarks.multiclass_section(nih) == [] and benchmarks.confusion_frame(nih[0]) == []
    assert "test_f1_macro" not in benchmarks.table1(nih)[0]


def test_learning_curve_section_reads_the_curve_points(tmp_path):
    from helpers import fake_checkpoint

    fake_checkpoint(tmp_path / "nih14-local" / "n400", "resnet18", seed=6)
    section = "\n".join(benchmarks.curve_section(tmp_path, "nih14-local"))
    assert "Learning curve" in section and "| resnet18 | 400 |" in section
    assert benchmarks.curve_section(tmp_path, "pneumoniamnist-local") == []


def test_localisation_section_shows_the_task_rows_with_the_command(tmp_path):
    import json

    assert benchmarks.localisation_section(tmp_path, "nih14-local") == []  # not run: no section
    row = {"dataset": "nih14-local", "model": "resnet18", "method": "GradCAM", "subset": "test", "layer": "layer2",
           "grid": "8x8", "boxes": 6, "no_localisation": 0, "pointing": 0.5, "chance": 0.022, "precision": 0.1,
           "recall": 0.2, "f1": 0.133}
    other = {**row, "dataset": "pneumoniamnist-local", "model": "vanilla_cnn"}
    (tmp_path / "localisation.json").write_text(json.dumps(
        {"command": "python benchmarks/localisation.py", "region_level": 0.5, "rows": [row, other], "boxes": []}))
    text = "\n".join(benchmarks.localisation_section(tmp_path, "nih14-local"))
    assert "### Grad-CAM localisation against the NIH boxes" in text and "`python benchmarks/localisation.py`" in text
    assert "| resnet18 | test | layer2 (8x8) | 6 | 0 | 0.500 | 0.022 | 0.100 | 0.200 | 0.133 |" in text
    assert "vanilla_cnn" not in text and "0.5 of its peak" in text


# ---- seeds and the ranking claims they allow; the baseline comparison over patients --------------------------------

def _with_test_probs(ck, probs: np.ndarray, groups: np.ndarray | None = None):
    """A checkpoint whose stored test probabilities (and patient codes) are replaced, its test metrics read again."""
    from cxrcore import evaluation
    from cxrcore.checkpoints import CARD, Checkpoint, read_card, read_predictions, rewrite

    preds = {**read_predictions(ck.path), "test_probs": probs.astype(np.float32)}
    if groups is not None:
        preds["test_groups"] = groups
    import json
    rewrite(ck.path, json.loads((ck.path / CARD).read_text()), preds)
    evaluation.evaluate_folder(ck.path, n_boot=20, force=True)
    return Checkpoint(ck.path, read_card(ck.path))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Two models of three seeds each on the same test labels: 'resnet18' close to the labels, 'vanilla_cnn' noise;
    test images in pairs from one patient."""
    from helpers import fake_checkpoint

    root = tmp_path_factory.mktemp("seeded")
    seeds = root / "seeds"
    groups = np.repeat(np.arange(60), 2).astype(np.float32)
    out = {}
    for model, signal in (("resnet18", 3.0), ("vanilla_cnn", 0.0)):
        for k in range(3):
            where = root / "checkpoints" if k == 0 else seeds / "nih14-local" / f"seed{k}"
            ck = fake_checkpoint(where, model, seed=10 * k + len(model))
            y = ck.predictions()["test_labels"]
            noise = np.random.default_rng([k, len(model)]).normal(size=y.shape)
            out.setdefault(model, []).append(_with_test_probs(ck, 1 / (1 + np.exp(-(signal * y + noise))), groups))
    return root, out


def test_seed_checkpoints_are_the_main_model_then_its_seeds_in_order(seeded):
    root, made = seeded
    main = find(root / "checkpoints")
    groups = benchmarks.seed_checkpoints(main, root / "seeds", "nih14-local")
    assert {m: [c.path for c in v] for m, v in groups.items()} == {m: [c.path for c in v] for m, v in made.items()}
    assert benchmarks.seed_checkpoints(main, None, "nih14-local") == {c.id: [c] for c in main}


def test_seed_rows_give_mean_and_sample_sd_of_test_auc(seeded):
    _, made = seeded
    row = {r["model"]: r for r in benchmarks.seed_rows(made)}["vanilla_cnn"]
    aucs = [c.card.metrics.test.auc_macro for c in made["vanilla_cnn"]]
    assert row["seeds"] == 3 and row["test_auc_mean"] == pytest.approx(np.mean(aucs))
    assert row["test_auc_sd"] == pytest.approx(np.std(aucs, ddof=1)) and row["oof_auc_mean"] is None
    vals = [c.card.metrics.val.auc_macro for c in made["vanilla_cnn"]]
    assert row["val_auc_seed0"] == vals[0] and row["val_auc_others"] == pytest.approx(np.mean(vals[1:]))
    assert row["commits"] == len({c.card.git_commit for c in made["vanilla_cnn"]}) >= 1
    assert benchmarks.seed_summary([0.6])["sd"] is None  # one seed has no spread


def test_a_ranking_is_claimed_only_where_seeds_and_the_patient_bootstrap_both_separate(seeded):
    _, made = seeded
    good, noise = made["resnet18"], made["vanilla_cnn"]
    claim = benchmarks.ranking_claim(good, noise, n_boot=200)
    assert claim["winner"] == "resnet18" and claim["seeds_separate"] and claim["bootstrap_separates"]
    assert claim["resampled"] == "patients" and claim["diff"] > 0.3
    assert benchmarks.ranking_claim(noise, good, n_boot=200)["winner"] == "resnet18"
    # one seed each: the seeds cannot separate them, however clear the bootstrap is
    single = benchmarks.ranking_claim(good[:1], noise[:1], n_boot=200)
    assert single["bootstrap_separates"] and not single["seeds_separate"] and single["winner"] is None
    # two seeds of one model against the third seed of the same: not separated
    same = benchmarks.ranking_claim(noise[:2], [noise[2], noise[0]], n_boot=200)
    assert same["winner"] is None and same["claim"] == "not separated"
    rows = benchmarks.ranking_rows(made, n_boot=100)
    assert [(r["a"], r["b"]) for r in rows] == [("resnet18", "vanilla_cnn")]


def test_paired_diff_over_seeds_of_one_is_the_single_model_diff(seeded):
    _, made = seeded
    p = [c.predictions() for c in (made["resnet18"][0], made["vanilla_cnn"][0])]
    y, g = p[0]["test_labels"], p[0]["test_groups"]
    one = metrics.paired_auc_diff(y, p[0]["test_probs"], p[1]["test_probs"], n_boot=100, groups=g)
    lists = metrics.paired_auc_diff(y, [p[0]["test_probs"]], [p[1]["test_probs"]], n_boot=100, groups=g)
    assert one == lists and one["unit"] == "patient"


def test_baseline_comparison_resamples_patients_when_their_codes_are_stored(tmp_path):
    from helpers import fake_checkpoint

    cks = [fake_checkpoint(tmp_path, m, seed=s) for m, s in (("medmnist_baseline", 1), ("resnet18", 2))]
    assert {r["resampled"] for r in benchmarks.baseline_comparison(cks, n_boot=50)} == {"images"}
    groups = np.repeat(np.arange(40), 3).astype(np.float32)
    cks = [_with_test_probs(c, c.predictions()["test_probs"], groups) for c in cks]
    row = benchmarks.baseline_comparison(cks, n_boot=50)[0]
    p = [c.predictions() for c in cks]
    d = metrics.paired_auc_diff(p[0]["test_labels"], p[1]["test_probs"], p[0]["test_probs"], n_boot=50, groups=groups)
    assert row["resampled"] == "patients" and row["diff_ci"] == f"{d['ci_low']:+.3f} to {d['ci_high']:+.3f}"


def test_benchmarks_md_seed_section_shows_mean_sd_and_the_claims(seeded):
    root, _ = seeded
    main = find(root / "checkpoints")
    text = "\n".join(benchmarks.seed_section(main, root / "seeds", "nih14-local", n_boot=100))
    assert "### Seeds" in text and "| resnet18 | 3 |" in text and "resnet18 ranks higher" in text
    assert benchmarks.seed_section(main, None, "nih14-local") == []  # no second seed: no section


def test_a_seeds_tree_inside_the_checkpoint_root_is_not_taken_for_main_models(seeded):
    root, made = seeded
    everything = find(root)  # the main models and, below them, every seed
    groups = benchmarks.seed_checkpoints(everything, root / "seeds", "nih14-local")
    assert [c.path for c in groups["resnet18"]] == [c.path for c in made["resnet18"]]


def _trained(card, best_epoch, epochs_run, val_ci):
    import dataclasses
    val = dataclasses.replace(card.metrics.val, auc_macro_ci=val_ci)
    return dataclasses.replace(card, best_epoch=best_epoch, epochs_run=epochs_run,
                               metrics=dataclasses.replace(card.metrics, val=val))


@pytest.mark.parametrize("best, run, ci, why", [
    (5, 9, (0.56, 0.66), None),
    (1, 2, (0.56, 0.66), None),  # two epochs are too few to say it never improved
    (1, 7, (0.53, 0.64), "epoch 1 of 7"),
    (3, 9, (0.45, 0.55), "does not exclude chance"),
])
def test_a_model_did_not_converge_only_on_held_out_evidence(nih, best, run, ci, why):
    card = _trained(next(c for c in nih if c.id == "resnet18").card, best, run, ci)
    verdict = card.not_converged
    assert (verdict is None) if why is None else (why in verdict)


def test_a_model_that_did_not_converge_is_marked_and_never_best_single(nih):
    import dataclasses
    best = benchmarks.best_single(nih)
    stuck = dataclasses.replace(best, card=_trained(best.card, 1, 8, best.card.metrics.val.auc_macro_ci))
    others = [c for c in nih if c.id != best.id]
    assert benchmarks.best_single([stuck, *others]).id != best.id
    row = benchmarks.table1_row(stuck)
    assert row["converged"] == "no" and benchmarks.convergence_notes([stuck]) == [
        f"{best.id}: best held-out AUC at epoch 1 of 8: later epochs never improved on it"]


def test_pretraining_rows_set_each_fine_tuned_model_beside_the_tasks_own(tmp_path):
    from helpers import fake_checkpoint

    main = [fake_checkpoint(tmp_path / "checkpoints", m, seed=s) for m, s in (("resnet18", 1), ("vanilla_cnn", 2))]
    tuned = fake_checkpoint(tmp_path / "pretrain" / "nih14-local" / "from-kermany-pneumonia-64", "resnet18", seed=3)
    rows = benchmarks.pretraining_rows(main, tmp_path / "pretrain", "nih14-local")
    assert [r["model"] for r in rows] == ["resnet18"]  # vanilla_cnn has no pretrained twin
    r = rows[0]
    assert r["held_out_auc_main"] == main[0].card.metrics.val.auc_macro
    assert r["test_gain"] == pytest.approx(tuned.card.metrics.test.auc_macro - main[0].card.metrics.test.auc_macro)
    assert r["held_out_gain"] == pytest.approx(tuned.card.metrics.val.auc_macro - main[0].card.metrics.val.auc_macro)
    assert benchmarks.pretraining_rows(main, tmp_path / "pretrain", "pneumoniamnist-local") == []
    section = "\n".join(benchmarks.pretraining_section(main, tmp_path / "pretrain", "nih14-local"))
    assert "Chest X-ray pretraining against random init" in section and tuned.card.rebuild in section


def test_held_out_aucs_are_ranked_only_against_their_own_kind(tmp_path):
    """A validation AUC (a single split) is never ranked against an out-of-fold one: the cross-validated models
    are the pool where any exist, even when a single-split model's validation AUC is higher."""
    from helpers import fake_checkpoint

    single = fake_checkpoint(tmp_path, "resnet18", seed=1)
    cv = [fake_checkpoint(tmp_path, m, seed=s, cv=True) for m, s in (("vanilla_cnn", 2), ("cnn_small", 3))]
    assert [c.id for c in benchmarks.rankable([single, *cv])] == ["vanilla_cnn", "cnn_small"]
    assert benchmarks.rankable([single]) == [single]
    best = max(cv, key=lambda c: c.card.held_out_auc)
    assert benchmarks.best_single([single, *cv]).id == best.id
    assert all(c.card.cross_validated for c in cv) and not single.card.cross_validated
    rows = {r["model"]: r for r in benchmarks.table1([single, *cv])}
    assert rows["vanilla_cnn"]["held_out"] == "out-of-fold" and rows["resnet18"]["held_out"] == "validation"
    assert rows["vanilla_cnn"]["held_out_auc"] == cv[0].card.metrics.extra["oof"]["auc_macro"]
    assert rows["resnet18"]["held_out_auc"] == single.card.metrics.val.auc_macro


def test_a_seed_of_another_recipe_never_joins_a_row(tmp_path):
    """A cross-validated shipped model with a single-split seed 1 left in its seed tree (no seed 0 of that recipe
    kept): the row is the shipped model and its cross-validated seed 2 only."""
    from helpers import fake_checkpoint

    main = [fake_checkpoint(tmp_path / "checkpoints", "cnn_small", seed=1, cv=True)]
    seeds = tmp_path / "seeds" / "nih14-local"
    fake_checkpoint(seeds / "seed1", "cnn_small", seed=2)
    cv_seed = fake_checkpoint(seeds / "seed2", "cnn_small", seed=3, cv=True)
    row = benchmarks.seed_checkpoints(main, tmp_path / "seeds", "nih14-local")["cnn_small"]
    assert [c.path for c in row] == [main[0].path, cv_seed.path]


def test_a_kept_single_split_seed0_heads_its_seeds_row_and_fine_tunes_meet_their_own_recipe(tmp_path):
    """A model retrained cross-validated keeps its single-split seed 0 under seeds/<dataset>/seed0: the seeds row
    and the pretraining comparison use it, so neither mixes recipes."""
    from helpers import fake_checkpoint

    main = [fake_checkpoint(tmp_path / "checkpoints", "resnet18", seed=1, cv=True)]
    seeds = tmp_path / "seeds"
    seed0 = fake_checkpoint(seeds / "nih14-local" / "seed0", "resnet18", seed=2)
    seed1 = fake_checkpoint(seeds / "nih14-local" / "seed1", "resnet18", seed=3)
    groups = benchmarks.seed_checkpoints(main, seeds, "nih14-local")
    assert [c.path for c in groups["resnet18"]] == [seed0.path, seed1.path]
    assert [c.path for c in benchmarks.recipe_baselines(main, [seeds], "nih14-local")] == [main[0].path, seed0.path]
    assert [c.path for c in benchmarks.recipe_baselines(main, [], "nih14-local")] == [main[0].path]
    pre = tmp_path / "pretrain"
    tuned = {cv: fake_checkpoint(pre / "nih14-local" / f"from-kermany-{cv}", "resnet18", seed=4 + cv, cv=bool(cv))
             for cv in (0, 1)}
    rows = benchmarks.pretraining_rows(benchmarks.recipe_baselines(main, [seeds], "nih14-local"), pre, "nih14-local")
    by_recipe = {r["recipe"]: r for r in rows}
    cv_row, single_row = by_recipe[benchmarks.RECIPE_NAMES[True]], by_recipe[benchmarks.RECIPE_NAMES[False]]
    assert cv_row["held_out_auc_main"] == main[0].card.held_out_auc
    assert cv_row["held_out_auc_pretrained"] == tuned[1].card.held_out_auc
    assert single_row["held_out_auc_main"] == seed0.card.metrics.val.auc_macro
    assert (cv_row["base"], single_row["base"]) == ("pretrain/kermany-1/resnet18", "pretrain/kermany-0/resnet18")


def test_a_model_shipped_from_a_chest_base_keeps_its_random_init_seeds_apart(tmp_path):
    """Once a model ships fine-tuned from a chest X-ray base, its random-init seeds (kept under a seed tree of that
    recipe, seed 0 included) form their own row and are what its pretraining gain is measured against; a seed of
    the shipped recipe from another base is left out."""
    from helpers import fake_checkpoint

    base = {"kind": "checkpoint", "source": "project checkpoint cnn_deep (test)", "sha256": "ab" * 32}
    main = [fake_checkpoint(tmp_path / "checkpoints", "cnn_deep", seed=1, cv=True, init=base)]
    shipped_seeds, random_init = tmp_path / "seeds", tmp_path / "seeds-random-init"
    same = fake_checkpoint(shipped_seeds / "nih14-local" / "seed1", "cnn_deep", seed=2, cv=True, init=base)
    other_base = {**base, "sha256": "cd" * 32}
    fake_checkpoint(shipped_seeds / "nih14-local" / "seed2", "cnn_deep", seed=3, cv=True, init=other_base)
    scratch = [fake_checkpoint(random_init / "nih14-local" / f"seed{k}", "cnn_deep", seed=4 + k, cv=True)
               for k in range(2)]
    assert [c.path for c in benchmarks.seed_checkpoints(main, shipped_seeds, "nih14-local")["cnn_deep"]] == [
        main[0].path, same.path]
    assert [c.path for c in benchmarks.seed_checkpoints(main, random_init, "nih14-local")["cnn_deep"]] == [
        c.path for c in scratch]
    section = benchmarks.seed_section(main, random_init, "nih14-local", n_boot=20)
    assert "| cnn_deep | 2 |" in "\n".join(section) and not any(line.startswith("| a | b |") for line in section)
    pre = tmp_path / "pretrain"
    tuned = fake_checkpoint(pre / "nih14-local" / "from-kermany", "cnn_deep", seed=7, cv=True, init=base)
    baselines = benchmarks.recipe_baselines(main, [shipped_seeds, random_init], "nih14-local")
    tried, shipped = benchmarks.pretraining_rows(baselines, pre, "nih14-local")
    assert (tried["held_out_auc_main"], tried["held_out_auc_pretrained"], tried["init_main"]) == (
        scratch[0].card.held_out_auc, tuned.card.held_out_auc, "random")
    assert (tried["recipe"], tried["base"]) == (benchmarks.RECIPE_NAMES[True], "pretrain/kermany/cnn_deep")
    # the shipped model, fine-tuned from its zoo entry's base, is a row of its own against the same random init
    assert (shipped["recipe"], shipped["base"]) == (benchmarks.RECIPE_NAMES[True] + ", shipped",
                                                    get_spec("cnn_deep").chest_base.path("cnn_deep"))
    assert shipped["held_out_gain"] == main[0].card.held_out_auc - scratch[0].card.held_out_auc
    assert benchmarks.pretraining_rows(main, pre, "nih14-local") == []  # no random-init run to compare with


def test_markdown_leaves_a_missing_figure_blank():
    table = benchmarks.markdown([{"model": "vgg16", "sens": float("nan"), "spec": None, "auc": 0.4964}])
    assert table.splitlines()[-1] == "| vgg16 |  |  | 0.496 |"


def test_the_calibration_table_shows_each_models_calibration_check(nih):
    rows = {r["model"]: r for r in benchmarks.calibration_rows(nih, n_boot=50)}
    for ck in nih:
        check = benchmarks.calibration_on_test(ck, n_boot=50)
        assert rows[ck.id]["test_ece_calibrated"] == check.ece
        assert rows[ck.id]["test_ece_calibrated_ci"] == f"[{check.lo:.3f}, {check.hi:.3f}]"
        preds = ck.predictions()  # the diagnostic: served probabilities moved to the test mix from the held-out one
        y, p = benchmarks.split_arrays(preds, "test", ck.card.task)
        source = benchmarks.split_arrays(preds, "val", ck.card.task)[0].mean(axis=0)
        moved = metrics.prior_shift(p, source, y.mean(axis=0), exclusive=False)
        assert rows[ck.id]["test_ece_at_test_mix"] == pytest.approx(metrics.expected_calibration_error(y, moved))


def test_a_cross_validated_models_training_cost_counts_its_folds_everywhere_it_is_shown(tmp_path):
    from dataclasses import replace

    from helpers import fake_checkpoint

    cv = fake_checkpoint(tmp_path, "vanilla_cnn", cv=True)
    card = replace(cv.card, train_seconds=60.0, wall_seconds=600.0)  # the refit alone, then folds and refit
    assert benchmarks.train_minutes(card) == 10.0
    assert benchmarks.train_minutes(replace(card, metrics=replace(card.metrics, extra={}))) == 1.0  # single split
    row = benchmarks.table1([replace(cv, card=card)])[0]
    assert row["train_minutes"] == 10.0
