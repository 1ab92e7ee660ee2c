"""Training throughput of ``engine.fit``'s own step against a plain fp32 eager loop, same model and data (run by hand).

    python benchmarks/engine_speed.py                              # resnet18 at 64 and 224 px, nih14-local
    python benchmarks/engine_speed.py --models resnet18 densenet121 --sizes 64 --steps 5 --rounds 3

The engine arm is :class:`cxrcore.engine.TrainStep`, the step ``fit`` runs, fed the way ``fit`` feeds it
(:class:`cxrcore.engine.DeviceRows`: uint8 rows gathered on the device, resized, normalised and augmented there, in
the precision ``fit`` resolves for this machine, channels_last for CNNs). The plain arm is the textbook loop: a torch
Dataset that resizes and augments each PIL image with torchvision transforms, a DataLoader, NCHW fp32. Both run the
same optimiser and loss. The arms alternate (A B A B ...) so that load from other processes falls on both alike; each
figure is the median over rounds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from cxrcore.data import Augment, load_dataset  # noqa: E402
from cxrcore.engine import (DeviceRows, Prepared, TrainConfig, TrainStep, device, make_loss,  # noqa: E402
                            make_optimizer, resolve_precision)
from cxrcore.zoo import create_model, get_spec  # noqa: E402


class PlainDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, mean: float, std: float):
        self.images, self.labels = images, labels
        self.tf = transforms.Compose([
            transforms.Resize(size), transforms.RandomAffine(10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
            transforms.ToTensor(), transforms.Normalize([mean], [std])])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.tf(Image.fromarray(self.images[i])), torch.from_numpy(self.labels[i])


def plain_arm(model_id: str, data, size: int, batch: int) -> Callable[[], None]:
    """One step of the textbook loop per call."""
    spec = get_spec(model_id)
    torch.manual_seed(0)
    model = create_model(model_id, data.num_outputs, 1, size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    ds = PlainDataset(data.images["train"][:, 0].numpy(), data.labels["train"], size, *spec.norm)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)
    pw = torch.full((data.num_outputs,), 10.0)
    it = iter(loader)

    def step() -> None:
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        loss = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the textbook loop reads its loss every step
    return step


def engine_arm(model_id: str, data, size: int, batch: int) -> tuple[Callable[[], None], Prepared]:
    """One step of ``fit``'s TrainStep per call, fed as ``fit`` feeds it (the loss stays on the device)."""
    spec, dev = get_spec(model_id), device()
    torch.manual_seed(0)
    model = create_model(model_id, data.num_outputs, 1, size).to(dev)
    cfg = TrainConfig.for_model(spec, batch_size=batch)
    prep = Prepared(size, *spec.norm, in_chans=1, channels_last=not spec.vit,
                    precision=resolve_precision(cfg.precision, dev))
    if prep.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    opt = make_optimizer(model, cfg)
    step_fn = TrainStep(model, opt, make_loss(data, cfg, dev), prep, Augment(),
                        torch.amp.GradScaler(dev.type, enabled=prep.precision == "fp16"))
    x_all, y_all = DeviceRows(data.images["train"], dev), DeviceRows(torch.from_numpy(data.labels["train"]), dev)
    gen, aug_gen = torch.Generator().manual_seed(0), torch.Generator(device=dev).manual_seed(1)

    def step() -> None:
        idx = torch.randint(0, len(y_all), (batch,), generator=gen)
        step_fn(x_all.take(idx), y_all.take(idx), aug_gen)
    return step, prep


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up (allocator, first DataLoader batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18"])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 224], help="model input sizes")
    p.add_argument("--steps", type=int, default=4, help="timed steps per arm and round")
    p.add_argument("--rounds", type=int, default=3, help="A B rounds")
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    data = load_dataset("nih14-local", 64)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device()}, batch {a.batch}, "
          f"{a.steps} steps x {a.rounds} interleaved rounds, medians")
    print(f"{'model':<12}{'px':>5}{'plain img/s':>13}{'engine img/s':>14}{'speed-up':>10}  engine settings")
    for m in a.models:
        for size in a.sizes:
            plain = plain_arm(m, data, size, a.batch)
            fast, prep = engine_arm(m, data, size, a.batch)
            times: dict[str, list[float]] = {"plain": [], "engine": []}
            for _ in range(a.rounds):
                for name, step in (("plain", plain), ("engine", fast)):
                    times[name].append(seconds_per_step(step, a.steps))
            base, eng = (a.batch / statistics.median(times[k]) for k in ("plain", "engine"))
            print(f"{m:<12}{size:>5}{base:>13.1f}{eng:>14.1f}{eng / base:>9.2f}x  precision={prep.precision} "
                  f"channels_last={prep.channels_last}")


if __name__ == "__main__":
    main()
