"""Scale check on a synthetic dataset of full ChestMNIST's shape, loaded the way training loads it (run by hand).

    python benchmarks/scale.py --make /tmp/chestmnist_64.npz           # a MedMNIST-layout npz, once (460 MB at 64 px)
    python benchmarks/scale.py --data /tmp/chestmnist_64.npz           # one process (the first run fills the cache)
    torchrun --nproc_per_node 2 benchmarks/scale.py --data /tmp/chestmnist_64.npz   # two ranks (gloo on CPUs)

The file is read through the real dataset path (:func:`cxrcore.datasets.load` of a ``MedMNISTFile`` entry built on
the fly): the first run decodes it once into the dataset cache (``$CXR_CACHE_DIR``) and stores its split checksum
there; later runs, and every DDP rank, memory-map the cached uncompressed ``.npy`` splits, so the page cache holds one
copy and a process's private (anonymous) memory does not grow with the dataset. Run one process first: ranks that
all find the cache empty each decode it. Printed per rank: load time (cold or cached), peak RSS and the file-backed /
private split of the resident memory; per input size, the time of ``fit``'s step with its data path (rows gathered
from the mapped file, resized, normalised and augmented) against the model-only step on a ready batch, alternated
(A B A B, medians); sharded validation time; and, on rank 0, the card's metrics (1,000 patient-level bootstrap
resamples) for a test split of 22,433 images x 14 labels.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cxrcore import datasets, metrics  # noqa: E402
from cxrcore.data import Augment, Dataset  # noqa: E402
from cxrcore.datasets import cache  # noqa: E402
from cxrcore.datasets.builtin import NIH14  # noqa: E402
from cxrcore.engine import (DeviceRows, Dist, Prepared, TrainConfig, TrainStep, device, evaluate,  # noqa: E402
                            make_loss, make_optimizer, resolve_precision)
from cxrcore.zoo import create_model, get_spec  # noqa: E402

COUNTS = {"train": 78_468, "val": 11_219, "test": 22_433}  # ChestMNIST's official splits
LABELS = 14
PREVALENCE = np.array([.10, .025, .12, .18, .05, .055, .012, .047, .04, .02, .022, .015, .03, .002])  # about NIH's


def make(path: Path, size: int, seed: int = 0) -> None:
    """Random uint8 images and labels of ChestMNIST's shape in MedMNIST's npz layout (stored, not deflated, as
    MedMNIST's are), written chunk-wise into the zip (never a whole split in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for split, n in COUNTS.items():
            with z.open(f"{split}_images.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (n, size, size)})
                for i in range(0, n, 4096):
                    f.write(rng.integers(0, 256, (min(4096, n - i), size, size), dtype=np.uint8).tobytes())
            with z.open(f"{split}_labels.npy", "w") as f:
                np.save(f, (rng.uniform(size=(n, LABELS)) < PREVALENCE).astype(np.uint8))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")


def entry_for(path: Path) -> datasets.DatasetEntry:
    """An unregistered entry for the synthetic file: the layout, task and labels of ChestMNIST."""
    pattern = str(path.resolve()).replace("{", "{{").replace("}", "}}")
    return datasets.DatasetEntry("synthetic-chestmnist", "Synthetic ChestMNIST-shaped", "multi-label", NIH14,
                                 "random pixels and labels (benchmarks/scale.py)", datasets.MedMNISTFile(pattern))


def load(path: Path, size: int) -> tuple[Dataset, bool]:
    """The dataset as training gets it, and whether this call decoded it (cold) rather than mapping the cache."""
    entry = entry_for(path)
    folders = lambda: set((cache.cache_root() / entry.name).glob(f"{size}px-*"))  # noqa: E731
    before = folders()
    data = datasets.load(entry, size)
    return data, folders() != before


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
    p.add_argument("--make", type=Path, help="write the synthetic npz file here and exit")
    p.add_argument("--size", type=int, default=64, help="image size of the file (--make writes it, --data reads it)")
    p.add_argument("--data", type=Path, help="npz file written by --make")
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
    data, cold = load(a.data, a.size)
    checksum = data.split_checksum()  # what a card records: stored beside the cache, never re-hashed
    print(f"{tag} load {time.perf_counter() - t0:.2f} s, {'decoded into the cache' if cold else 'from the cache'} "
          f"({sum(x.nbytes for x in data.images.values()) / 1e6:.0f} MB mapped, split checksum "
          f"{checksum[:12]}); {memory()}", flush=True)
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
        data = data.subset({"val": a.val_images})
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
