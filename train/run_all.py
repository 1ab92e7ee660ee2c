"""Train every architecture of the zoo (or --models) and write checkpoints, cards and the benchmark tables.

    python train/run_all.py --list
    python train/run_all.py                                  # every id on nih14-local at 64 px, 5-fold CV
    python train/run_all.py --models resnet18 densenet121 --epochs 20
    python train/run_all.py --dataset pneumoniamnist-local --size 28 --models efficientnet_lite0
    python train/run_all.py --quick                          # a few-minute smoke run on a real subset (single split)
    python train/run_all.py --models cnn_small --cv 0        # the single train / val split instead of CV
    python train/run_all.py --models cnn_small --seeds 3     # three seeds (extra ones under seeds/)
    python train/evaluate_test.py --root checkpoints/nih14-local   # the test split, read once (run_all's last step)
    python train/run_all.py --models resnet18 --train-sizes 100,250,500,all   # learning curve (curves/)
    torchrun --nproc_per_node 2 train/run_all.py --models resnet18   # DistributedDataParallel (gloo on CPU, single split)

Every recipe decision (epochs, calibration, thresholds, ensemble members) is taken on held-out data: the pooled
out-of-fold predictions of patient-grouped K-fold cross-validation (the default), or the validation split
(``--cv 0``). Training reads no test label. After all training, a last and separate step reads the test split once
(``cxrcore.evaluation``, what ``train/evaluate_test.py`` runs) and fills the cards' ``metrics.test``.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from cxrcore import benchmarks, checkpoints, crossval, curves, evaluation, ood  # noqa: E402
from cxrcore import datasets  # noqa: E402
from cxrcore.data import DEFAULT_DATASET, REPO_ROOT, DatasetNotFound, data_dir, load_dataset  # noqa: E402
from cxrcore.engine import Dist, TrainConfig  # noqa: E402
from cxrcore.inference import load_model  # noqa: E402
from cxrcore.runs import (MEMBERS_BY_NAME, build_ensemble, ensemble_by_held_out, is_up_to_date, recipe,  # noqa: E402
                          seed_config, seed_root, seeds_root, train_one)
from cxrcore.zoo import get_spec, list_models  # noqa: E402

QUICK_MODELS = ["vanilla_cnn", "resnet18", "mobilenet_v2", "efficientnet_lite0", "vit_scratch"]
QUICK_SUBSET = {"train": 160, "val": 80, "test": 80}
DEFAULT_CV = 5


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print every registered model id and exit")
    p.add_argument("--models", nargs="+", help="ids to train (default: all)")
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"a registered dataset ({', '.join(e.name for e in datasets.entries())}) or a MedMNIST flag")
    p.add_argument("--size", type=int, help="dataset image size (default: the dataset entry's)")
    p.add_argument("--download", action="store_true", help="download MedMNIST files when missing (needs internet)")
    p.add_argument("--out", type=Path, help="checkpoint root (default checkpoints/, or checkpoints/<dataset>)")
    p.add_argument("--init", help="auto | imagenet | random | path to a checkpoint folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, help="per process (per GPU); under DDP the lr is scaled linearly")
    p.add_argument("--pos-weight", help="a number or 'balanced'")
    p.add_argument("--input-size", type=int, help="model input size (images are resized to it)")
    p.add_argument("--freeze-all-but", type=int, help="partial fine-tune: train only the last N blocks and the head")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the recipe's, 0.05)")
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--force", action="store_true", help="retrain even when the checkpoint is up to date")
    p.add_argument("--ensemble", nargs="*",
                   help="members of the mean-probability ensemble (default: the 5 best by held-out AUC; none if empty)")
    p.add_argument("--quick", action="store_true", help="smoke run: a few models, 1 epoch, a small real subset")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"],
                   help="training precision (default: the zoo's, else auto: what this hardware runs fast; recorded)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the training forward pass")
    p.add_argument("--sync-batchnorm", action="store_true", default=None,
                   help="DDP on GPUs: BatchNorm statistics over the global batch (for small per-GPU batches)")
    p.add_argument("--train-sizes", type=curves.parse_sizes, metavar="N,N,...,all",
                   help="learning curve: train on nested, patient-grouped subsets of train of these sizes (same val "
                        "and test), each into <out>/<dataset>/n<images>/<id> (default out: curves/)")
    p.add_argument("--subset-seed", type=int, default=curves.DEFAULT_SEED,
                   help="seed of the patient order the learning-curve subsets are drawn in")
    p.add_argument("--cv", type=int, metavar="K",
                   help=f"patient-grouped K-fold cross-validation on train + val (default {DEFAULT_CV}; 0: the single "
                        "train / val split, the default of --quick, --train-sizes and torchrun): epochs, calibration "
                        "and thresholds from the pooled out-of-fold predictions, then one refit on train + val")
    p.add_argument("--no-cv", dest="cv", action="store_const", const=0, help="the same as --cv 0")
    p.add_argument("--cv-seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train N seeds of each model: seed 0 is the model in --out, seeds 1..N-1 go to "
                        "<seeds root>/<dataset>/seed<k>/<id> (default root: seeds/, or <out>-seeds with --out)")
    p.add_argument("--pin", action="store_true",
                   help="record the weights now in checkpoints/ (or --out) as trusted in its MANIFEST.json and exit")
    return p.parse_args(argv)


def overrides(a: argparse.Namespace) -> dict:
    pw = a.pos_weight
    if pw is not None and pw != "balanced":
        pw = float(pw)
    return dict(init=a.init, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, pos_weight=pw,
                input_size=a.input_size, freeze_all_but=a.freeze_all_but, seed=a.seed,
                label_smoothing=a.label_smoothing, weight_decay=a.weight_decay, patience=a.patience, precision=a.precision, compile=a.compile,
                sync_batchnorm=a.sync_batchnorm)


def cv_matches(folder: Path, a: argparse.Namespace) -> bool:
    """Whether an up-to-date checkpoint was trained the way asked: cross-validated with K folds, or not at all."""
    cv = checkpoints.read_card(folder).extra.get("cv") or {}
    return (cv.get("k") or 0, cv.get("seed", a.cv_seed)) == (a.cv, a.cv_seed)


def trained_here(root: Path) -> dict[str, checkpoints.Checkpoint]:
    """The model folders directly under ``root`` whose card reads, before the test split is evaluated (so nothing
    chosen from them can have looked at it)."""
    out = {}
    for card_path in sorted(root.glob(f"*/{checkpoints.CARD}")):
        try:
            card = checkpoints.read_card(card_path.parent)
        except checkpoints.CheckpointError:
            continue
        if not card.members:
            out[card.id] = checkpoints.Checkpoint(card_path.parent, card)
    return out


def ensemble_members(found: dict[str, checkpoints.Checkpoint]) -> tuple[list[checkpoints.Checkpoint], str]:
    """The default ensemble and how it was chosen: the shipped models that converged, ranked by held-out AUC among
    those ranked together (:func:`benchmarks.rankable`: out-of-fold where any are cross-validated, else
    validation), and of those the leading ones whose mean is best on the same held-out predictions
    (:func:`runs.ensemble_by_held_out`; never test), so a fresh clone can rebuild every member."""
    pool = [c for c in found.values() if c.has_weights and c.id in list_models() and get_spec(c.id).ship
            and not c.card.not_converged]
    ranked = sorted(benchmarks.rankable(pool), key=lambda c: -c.card.held_out_auc)
    if len(ranked) < 2:
        return ranked, MEMBERS_BY_NAME
    choice = ensemble_by_held_out(ranked)
    return choice.members, choice.how


def ensemble_command(base_cmd: str, members: list[checkpoints.Checkpoint]) -> str:
    """The ensemble's rebuild command: its members by id and, where they share one, the precision they were trained
    in (part of the recipe: without it, the members already there would count as out of date and be retrained)."""
    ids = " ".join(m.id for m in members)  # rebuilding trains only the members that are missing
    precisions = {m.card.trained_precision for m in members}
    flag = f" --precision {precisions.pop()}" if len(precisions) == 1 and None not in precisions else ""
    return f"{base_cmd} --models {ids}{flag} --ensemble {ids}"


def fit_ood_detectors(cks: list[checkpoints.Checkpoint], data) -> None:
    """Out-of-distribution detector beside every checkpoint with weights (re-fitted when the weights change)."""
    for ck in cks:
        det_path = ck.path / ood.OOD_FILE
        newer = det_path.exists() and det_path.stat().st_mtime >= (ck.path / checkpoints.WEIGHTS).stat().st_mtime
        if newer and ood.is_current(det_path):  # an older kind of detector, or a refused one, is refitted
            continue
        try:
            m = load_model(ck.path)
        except (checkpoints.CheckpointError, FileNotFoundError) as exc:
            print(f"{ck.id}: no OOD detector ({exc})")
            continue
        det = ood.fit_checkpoint(m, data, extra=ood.upload_sources(m.card.dataset.name, m.data_size, data_dir()))
        print(f"{ck.id}: OOD detector fitted (threshold {det.threshold:.2f} at the val {det.percentile:g}th percentile)")


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.list:
        print("\n".join(list_models()))
        return 0
    if a.pin:
        print(f"pinned: {checkpoints.pin(a.out or REPO_ROOT / 'checkpoints')}")
        return 0
    if a.quick:
        a.models = a.models or QUICK_MODELS
        a.epochs = a.epochs or 1
        a.out = a.out or REPO_ROOT / "runs" / "quick"
    try:
        entry = datasets.get(a.dataset)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = a.out or REPO_ROOT / "checkpoints" / (entry.name if entry.checkpoint_dir is None else entry.checkpoint_dir)
    ids = a.models or list_models()
    try:  # fail before any training on a typo
        for i in ids:
            get_spec(i)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    try:
        data = load_dataset(a.dataset, a.size, download=a.download)
    except (DatasetNotFound, datasets.DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    a.size = data.size
    if a.quick:
        data = data.subset(QUICK_SUBSET)
    dist = Dist.from_env()
    if a.cv is None:  # cross-validation by default; a smoke run, a learning curve and DDP use the single split
        a.cv = 0 if a.quick or a.train_sizes or dist.world > 1 else DEFAULT_CV
    if a.cv and (dist.world > 1 or a.train_sizes):
        print("error: --cv runs in one process and not with --train-sizes; pass --cv 0", file=sys.stderr)
        return 2
    if a.seeds < 1 or (a.seeds > 1 and a.train_sizes):
        print("error: --seeds needs N >= 1 and does not combine with --train-sizes", file=sys.stderr)
        return 2
    base_cmd = f"python train/run_all.py --dataset {a.dataset} --size {a.size}"
    runs = [(out, data)]  # (checkpoint root, data) of every run; a learning curve has one per training subset
    if a.train_sizes:
        try:
            runs = [(curves.point_root(a.out or curves.curves_root(), d), d)
                    for d in curves.subsets(data, a.train_sizes, a.subset_seed)]
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    seeds_at = a.out.with_name(a.out.name + "-seeds") if a.out else seeds_root()  # never inside a checkpoint tree
    seed_roots = [seed_root(seeds_at, data.name, k) for k in range(1, a.seeds)]
    cmd = " ".join(shlex.quote(x) for x in ["python", "train/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    for (root, run_data), model_id in itertools.product(runs, ids):
        base = recipe(model_id, data.name, **overrides(a))
        for k, seed_out in enumerate([root, *seed_roots]):
            try:
                train_model(model_id, run_data, seed_config(base, k), seed_out, root, cmd, a, dist,
                            f"{model_id} seed {k}" if k else model_id)
            except checkpoints.CheckpointError as exc:  # a full disk or unwritable folder: say so, keep what was
                print(f"error: {model_id}: {exc}", file=sys.stderr)
                return 1
    if not dist.main:
        return 0
    members = None
    if not a.train_sizes:  # the ensemble: members chosen on held-out AUC, built before the test split is read
        found = trained_here(out)
        members, how = (([found[i] for i in a.ensemble if i in found], MEMBERS_BY_NAME) if a.ensemble is not None
                        else ensemble_members(found))
        if len(members) >= 2:
            build_ensemble(members, out / "ensemble", ensemble_command(base_cmd, members),
                           n_boot=200 if a.quick else 1000, groups=data.extras.get("patients"), how_members=how)
    # the last, separate step: the test split, read once; every decision above was taken on held-out data
    print("== test split, read once, after all training (no recipe decision reads it) ==")
    for root, run_data in runs:
        folders = [root / i for i in ids] + [r / i for r in seed_roots for i in ids]
        folders += [out / "ensemble"] if members and len(members) >= 2 else []
        for folder, test in evaluation.evaluate_folders(folders, run_data, 200 if a.quick else 1000):
            print(evaluation.line(folder, test))
    if a.train_sizes:
        if a.out is None and not a.quick:  # the project's own curves: BENCHMARKS.md shows them
            benchmarks.write_project_report()
        print(f"learning-curve points written under {runs[0][0].parent}")
        return 0
    fit_ood_detectors([c for c in benchmarks.direct(out) if c.has_weights and c.id != "ensemble"], data)
    benchmarks.write_tables(out)
    if a.out is None and not a.quick:  # the project's own checkpoints: BENCHMARKS.md reports them
        benchmarks.write_project_report()
    print(f"tables written to {out}")
    return 0


def build_chest_base(model_id: str, cfg: TrainConfig, dist: Dist) -> None:
    """Train the zoo's chest X-ray base of ``model_id`` first when its recipe starts from it and it is not here (a
    fresh clone: bases are not shipped), by the base's own command (in one process: under torchrun, say so)."""
    spec = get_spec(model_id)
    if not spec.chest_base or cfg.init != spec.chest_base.path(model_id):
        return
    if Path(cfg.init, checkpoints.WEIGHTS).exists():  # relative to where run_all runs, as --init and --out are
        return
    command = spec.chest_base.train_command(model_id)
    if dist.world > 1:
        raise checkpoints.CheckpointError(f"{model_id} starts from its chest X-ray base {cfg.init}, which is not "
                                          f"here: build it first ({command})")
    print(f"{model_id}: building its chest X-ray base first: {command}")
    if main(shlex.split(command)[2:]) != 0:
        raise checkpoints.CheckpointError(f"{model_id}: its chest X-ray base could not be built ({command})")


def train_model(model_id: str, data, cfg, out: Path, base_root: Path, cmd: str, a: argparse.Namespace, dist: Dist,
                name: str) -> None:
    """Train one model (one seed) into ``out/model_id`` unless it is up to date, and print its held-out figures
    (validation, or pooled out-of-fold): no test metric is computed here."""
    if not a.force and is_up_to_date(out / model_id, model_id, cfg, data, base_root) and cv_matches(out / model_id, a):
        if dist.main:
            print(f"{name}: up to date, skipped")
        return
    if a.precision is None:  # the rebuild command names the precision this machine chose
        cmd += f" --precision {cfg.precision}"
    build_chest_base(model_id, cfg, dist)
    bar = tqdm(total=cfg.epochs * (a.cv + 1) if a.cv else cfg.epochs, desc=name, unit="epoch",
               disable=not dist.main, dynamic_ncols=True)

    def progress(ev: dict) -> None:
        if ev.get("done") and "fold" in ev:  # cross-validation: k folds of full epochs, then the refit
            bar.update(1)
            bar.set_description(f"{name} fold {ev['fold']}")
        if ev.get("done"):
            bar.update(0 if "fold" in ev else ev["epoch"] + 1 - bar.n)  # a resumed run starts past zero
            bar.set_postfix(val_auc=f"{ev['val_auc']:.3f}", loss=f"{ev['train_loss']:.3f}")
        else:
            bar.set_postfix_str(f"step {ev['step']}/{ev['steps']} loss {ev['loss']:.3f}")

    n_boot = 200 if a.quick else 1000
    try:
        if a.cv:
            card = crossval.cross_validate(model_id, data, cfg, out, cmd, a.cv, a.cv_seed, progress, n_boot,
                                           base_root=base_root)
        else:
            card = train_one(model_id, data, cfg, out, cmd, progress, dist, n_boot, base_root=base_root)
    finally:
        bar.close()
    if card is None:
        return
    if a.cv:
        cv, oof = card.extra["cv"], card.metrics.extra["oof"]
        ci = oof.get("auc_macro_ci") or (float("nan"),) * 2
        print(f"{name}: {a.cv}-fold OOF AUC {oof['auc_macro']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] at the chosen "
              f"{cv['chosen_epochs']} epochs, then a refit on train + val ({card.seconds_per_epoch:.1f} s/epoch)")
    else:
        ci = card.metrics.val.auc_macro_ci or (float("nan"),) * 2
        print(f"{name}: {card.epochs_run} epochs, {card.seconds_per_epoch:.1f} s/epoch, best epoch "
              f"{card.best_epoch}, val AUC {card.metrics.val.auc_macro:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")


if __name__ == "__main__":
    sys.exit(main())
