"""Scale check on a synthetic, memory-mapped dataset of full ChestMNIST's shape (run by hand).

    python benchmarks/scale.py --make /tmp/chestmnist64                # write the .npy files once (460 MB at 64 px)
    python benchmarks/scale.py --data /tmp/chestmnist64                # one process
    torchrun --nproc_per_node 2 benchmarks/scale.py --data /tmp/chestmnist64    # two ranks (gloo on CPUs)

Each split is an uncompressed .npy opened with ``mmap_mode="r"``: every rank of a node maps the same file, so the
page cache holds one copy and a process's private (anonymous) memory does not grow with the dataset. Printed per
rank: load time, peak RSS and the file-backed / private split of the resident memory; per input size, the time of
``fit``'s step with its data path (rows gathered from the mapped file, resized, normalised and augmented) against the
model-only step on a ready batch, alternated (A B A B, medians); sharded validation time; and, on rank 0, the card's
metrics (1,000 patient-level bootstrap resamples) for a test split of 22,433 images x 14 labels.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cxrcore import metrics  # noqa: E402
from cxrcore.data import Augment, Dataset  # noqa: E402
from cxrcore.engine import (DeviceRows, Dist, Prepared, TrainConfig, TrainStep, device, evaluate,  # noqa: E402
                            make_loss, make_optimizer, resolve_precision)
from cxrcore.zoo import create_model, get_spec  # noqa: E402

COUNTS = {"train": 78_468, "val": 11_219, "test": 22_433}  # ChestMNIST's official splits
LABELS = 14
PREVALENCE = np.array([.10, .025, .12, .18, .05, .055, .012, .047, .04, .02, .022, .015, .03, .002])  # about NIH's


def make(folder: Path, size: int, seed: int = 0) -> None:
    """Random uint8 images and labels of ChestMNIST's shape, written chunk-wise (never all in memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in COUNTS.items():
        images = np.lib.format.open_memmap(folder / f"{split}_images.npy", "w+", np.uint8, (n, 1, size, size))
        for i in range(0, n, 4096):
            images[i:i + 4096] = rng.integers(0, 256, images[i:i + 4096].shape, dtype=np.uint8)
        images.flush()
        np.save(folder / f"{split}_labels.npy", (rng.uniform(size=(n, LABELS)) < PREVALENCE).astype(np.float32))
    print(f"wrote {folder} ({sum(f.stat().st_size for f in folder.iterdir()) / 1e6:.0f} MB)")


def load(folder: Path) -> Dataset:
    """The splits as tensors over the mapped files (no copy)."""
    with warnings.catch_warnings():  # read-only mapping: torch warns that it may not write to it (it never does)
        warnings.simplefilter("ignore", UserWarning)
        images = {s: torch.from_numpy(np.load(folder / f"{s}_images.npy", mmap_mode="r")) for s in COUNTS}
    labels = {s: np.load(folder / f"{s}_labels.npy") for s in COUNTS}
    size = images["train"].shape[-1]
    return Dataset("synthetic-chestmnist", size, metrics.TASK_MULTILABEL, [f"label{j}" for j in range(LABELS)],
                   images, labels, str(folder), "none")


def memory() -> str:
    """Peak RSS and the resident memory now: file-backed (the shared page cache; Pss_File is this process's share of
    it, which halves when two ranks map the same pages) and private (anonymous: what a copy of the data would grow)."""
    rows = {}
    for f in ("/proc/self/status", "/proc/self/smaps_rollup"):
        rows.update(dict(line.split(":", 1) for line in Path(f).read_text().splitlines()[1:] if ":" in line))
    mb = lambda key: int(rows[key].split()[0]) / 1024  # noqa: E731 - kB -> MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"peak RSS {peak:.0f} MB (now: file-backed {mb('RssFile'):.0f} MB of which this rank's share "
            f"{mb('Pss_File'):.0f} MB, private {mb('RssAnon'):.0f} MB)")


def step_times(data: Dataset, size: int, batch: int, rounds: int, steps: int,
               dev: torch.device) -> dict[str, float]:
    """Median seconds per step of fit's TrainStep fed from the mapped rows ("step"), of the model-only step on a
    ready batch ("model") and of the data path alone: gather, resize, normalise, augment ("data")."""
    spec = get_spec("resnet18")
    torch.manual_seed(0)
    model = create_model("resnet18", LABELS, 1, size).to(dev).to(memory_format=torch.channels_last).train()
    cfg = TrainConfig.for_model(spec, batch_size=batch)
    prep = Prepared(size, *spec.norm, 1, channels_last=True, precision=resolve_precision(cfg.precision, dev))
    opt, loss_fn = make_optimizer(model, cfg), make_loss(data, cfg, dev)
    step = TrainStep(model, opt, loss_fn, prep, Augment(), torch.amp.GradScaler(dev.type, enabled=False))
    rows, labels = DeviceRows(data.images["train"], dev), DeviceRows(torch.from_numpy(data.labels["train"]), dev)
    gen, aug_gen = torch.Generator().manual_seed(0), torch.Generator(device=dev).manual_seed(1)
    ready = prep(rows.take(torch.arange(batch)))
    y_ready = labels.take(torch.arange(batch))

    def with_data() -> None:
        idx = torch.randint(0, len(rows), (batch,), generator=gen)
        step(rows.take(idx), labels.take(idx), aug_gen)

    def data_only() -> None:
        idx = torch.randint(0, len(rows), (batch,), generator=gen)
        prep(rows.take(idx), step.augment, aug_gen)
        labels.take(idx)

    def model_only() -> None:
        with prep.autocast(dev):
            loss = loss_fn(model(ready).float(), y_ready)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out: dict[str, list[float]] = {"step": [], "model": [], "data": []}
    for _ in range(rounds):
        for name, fn in (("step", with_data), ("model", model_only), ("data", data_only)):
            fn()  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            out[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make", type=Path, help="write the synthetic files into this folder and exit")
    p.add_argument("--size", type=int, default=64, help="image size of the files --make writes")
    p.add_argument("--data", type=Path, help="folder written by --make")
    p.add_argument("--input-sizes", nargs="+", type=int, default=[64, 224], help="model input sizes to time")
    p.add_argument("--batch", type=int, default=32, help="per rank")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--val-images", type=int, default=2048,
                   help="validation images to score (0: the whole 11,219); the time per image is printed too")
    p.add_argument("--boot", type=int, default=1000)
    a = p.parse_args()
    if a.make:
        make(a.make, a.size)
        return
    dist = Dist.from_env()
    tag = f"[rank {dist.rank}/{dist.world}]"
    t0 = time.perf_counter()
    data = load(a.data)
    print(f"{tag} load {time.perf_counter() - t0:.2f} s ({sum(x.nbytes for x in data.images.values()) / 1e6:.0f} MB "
          f"mapped); {memory()}", flush=True)
    t0 = time.perf_counter()
    for x in data.images.values():  # read one byte of every page: the whole dataset resident, nothing copied
        int(x.view(-1)[::4096].sum())
    print(f"{tag} every page read in {time.perf_counter() - t0:.1f} s; {memory()}", flush=True)
    dev = device(dist)
    for size in a.input_sizes:
        t = step_times(data, size, a.batch, a.rounds, a.steps, dev)
        print(f"{tag} resnet18 {size} px batch {a.batch}: data path {t['data'] * 1e3:.1f} ms = "
              f"{100 * t['data'] / t['model']:.1f} % of the model-only step ({t['model'] * 1e3:.0f} ms); whole step "
              f"with data path {t['step'] * 1e3:.0f} ms ({100 * (t['step'] / t['model'] - 1):+.1f} %)", flush=True)
    if a.val_images:
        data.images["val"], data.labels["val"] = data.images["val"][:a.val_images], data.labels["val"][:a.val_images]
    spec = get_spec("resnet18")
    model = create_model("resnet18", LABELS, 1, data.size).to(dev).to(memory_format=torch.channels_last)
    prep = Prepared(data.size, *spec.norm, 1, channels_last=True, precision=resolve_precision("auto", dev))
    t0 = time.perf_counter()
    evaluate(model, data, "val", prep, make_loss(data, TrainConfig(), dev), dist)
    t = time.perf_counter() - t0
    n_val = len(data.labels["val"])
    print(f"{tag} validation of {n_val} images at {data.size} px in {dist.world} shard(s): {t:.1f} s "
          f"({t / n_val * 1e3:.2f} ms an image; the full 11,219: {t / n_val * COUNTS['val']:.0f} s)", flush=True)
    if dist.main:
        y = data.labels["test"]
        rng = np.random.default_rng(1)
        p_test = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.2 * y - 2))).astype(np.float32)
        patients = rng.integers(0, len(y) // 3, len(y))  # about 3 images a patient, as in NIH
        th = [0.5] * LABELS
        t0 = time.perf_counter()
        metrics.auc_intervals(y, p_test, n_boot=a.boot, groups=patients)
        t_boot = time.perf_counter() - t0
        t0 = time.perf_counter()
        s = metrics.summarize(y, p_test, data.label_names, metrics.TASK_MULTILABEL, th, a.boot, patients)
        print(f"{tag} metrics of a {len(y):,} x {LABELS} test split, {a.boot} patient resamples: bootstrap "
              f"{t_boot:.1f} s, whole card summary {time.perf_counter() - t0:.1f} s (AUC {s['auc_macro']:.3f} "
              f"[{s['auc_macro_ci'][0]:.3f}, {s['auc_macro_ci'][1]:.3f}])", flush=True)
    print(f"{tag} end: {memory()}", flush=True)
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
