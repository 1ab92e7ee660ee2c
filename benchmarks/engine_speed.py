"""Training throughput of the engine against a plain fp32 eager loop, same model and data (run by hand).

    python benchmarks/engine_speed.py                      # resnet18 and densenet121 at 64 px, nih14-local
                                                           # (the engine with and without channels_last)
    python benchmarks/engine_speed.py --models resnet18 --steps 20

The plain loop is the textbook one: a torch Dataset that augments each PIL image with torchvision transforms,
a DataLoader, NCHW fp32. The engine preloads uint8 tensors, augments whole batches at once and uses channels_last and
bf16 autocast where the CPU supports them (cxrcore.engine.Prepared). Both run the same optimiser and loss.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from cxrcore.data import Augment, load_dataset  # noqa: E402
from cxrcore.engine import Prepared, TrainConfig, cpu_has_bf16, make_loss, make_optimizer  # noqa: E402
from cxrcore.zoo import create_model, get_spec  # noqa: E402


class PlainDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float):
        self.images, self.labels = images, labels
        self.tf = transforms.Compose([
            transforms.RandomAffine(10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
            transforms.ToTensor(), transforms.Normalize([mean], [std])])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.tf(Image.fromarray(self.images[i])), torch.from_numpy(self.labels[i])


def plain(model_id: str, data, steps: int, batch: int) -> float:
    spec = get_spec(model_id)
    torch.manual_seed(0)
    model = create_model(model_id, data.num_outputs, 1, data.size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    ds = PlainDataset(data.images["train"][:, 0].numpy(), data.labels["train"], *spec.norm)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)
    pw = torch.full((data.num_outputs,), 10.0)
    model.train()
    n, t0 = 0, None
    it = iter(loader)
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps excluded
            t0, n = time.perf_counter(), 0
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        loss = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x)
    return n / (time.perf_counter() - t0)


def engine(model_id: str, data, steps: int, batch: int, channels_last: bool) -> tuple[float, Prepared]:
    spec = get_spec(model_id)
    torch.manual_seed(0)
    model = create_model(model_id, data.num_outputs, 1, data.size)
    cfg = TrainConfig.for_model(spec, batch_size=batch)
    # the data's own size, as the plain loop sees it (the zoo may upscale some models' inputs in real training)
    prep = Prepared(data.size, *spec.norm, in_chans=1, channels_last=channels_last, bf16=cpu_has_bf16())
    if prep.channels_last:
        model.to(memory_format=torch.channels_last)
    opt, loss_fn, aug = make_optimizer(model, cfg), make_loss(data, cfg), Augment()
    gen = torch.Generator().manual_seed(0)
    x_all, y_all = data.images["train"], torch.from_numpy(data.labels["train"])
    model.train()
    n, t0 = 0, None
    for step in range(steps + 2):
        if step == 2:
            t0, n = time.perf_counter(), 0
        idx = torch.randint(0, len(y_all), (batch,), generator=gen)
        x = aug(prep(x_all[idx]), gen)
        with prep.autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += batch
    return n / (time.perf_counter() - t0), prep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "densenet121"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    data = load_dataset("nih14-local", 64)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 supported: {cpu_has_bf16()}")
    print(f"{'model':<14}{'plain img/s':>12}{'engine img/s':>14}{'speed-up':>10}  engine settings")
    for m in a.models:
        base = plain(m, data, a.steps, a.batch)
        for channels_last in (True, False):
            fast, prep = engine(m, data, a.steps, a.batch, channels_last)
            print(f"{m:<14}{base:>12.1f}{fast:>14.1f}{fast / base:>9.2f}x  channels_last={prep.channels_last} "
                  f"bf16={prep.bf16}")


if __name__ == "__main__":
    main()
