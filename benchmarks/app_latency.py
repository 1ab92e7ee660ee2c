"""Warm latency of what the app does for one upload (run by hand): decode a 1024 px NIH PNG, predictions from every
shipped model of the task, and one Grad-CAM. Targets on the 2-core CPU: predictions < 1 s in all, one CAM < 0.3 s.

    python benchmarks/app_latency.py
    python benchmarks/app_latency.py --image ../shared/data/samples/00000284_000.png --cam-model densenet121
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cxrcore import explain, imaging  # noqa: E402
from cxrcore.data import DEFAULT_DATASET, REPO_ROOT, data_dir  # noqa: E402
from cxrcore.inference import load_all  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, default=None)
    p.add_argument("--checkpoints", type=Path, default=REPO_ROOT / "checkpoints")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--cam-model", default="densenet121")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the app serves on 1: CXR_APP_THREADS)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    image = a.image or sorted((data_dir() / "samples").glob("*.png"))[0]
    raw = image.read_bytes()
    t0 = time.perf_counter()
    models, problems = load_all(a.checkpoints, a.dataset)
    models = {k: m for k, m in models.items() if m.spec.ship}  # what a fresh clone has
    print(f"loaded {len(models)} models in {time.perf_counter() - t0:.2f} s (cold); not loadable: {len(problems)}")

    dec_s, decoded = timed(lambda: imaging.decode(raw, image.name), a.repeats)
    size = next(iter(models.values())).data_size
    batch = imaging.to_model_batch(imaging.to_dataset_size(decoded.pixels, size))
    print(f"decode {image.name} ({decoded.pixels.shape[1]}x{decoded.pixels.shape[0]}): {dec_s * 1000:.0f} ms")
    total = 0.0
    for key, m in models.items():
        s, _ = timed(lambda m=m: m.predict(batch), a.repeats)
        total += s
        print(f"  predict {key:<40} {s * 1000:7.1f} ms")
    print(f"all predictions: {total * 1000:.0f} ms (target < 1000 ms); decode + predictions: "
          f"{(total + dec_s) * 1000:.0f} ms")
    cam_key = next((k for k in models if k.endswith("/" + a.cam_model)), next(iter(models)))
    cam_s, _ = timed(lambda: explain.cam_map(models[cam_key], batch, 0, "GradCAM"), a.repeats)
    print(f"one Grad-CAM ({cam_key}): {cam_s * 1000:.0f} ms (target < 300 ms)")


if __name__ == "__main__":
    main()
