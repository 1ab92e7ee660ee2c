"""Grad-CAM localisation against the NIH boxes (run by hand): pointing-game hit rate and the transfer report's area
precision / recall / F1 of each shipped model's thresholded CAM, for every boxed image on this machine, written to
``checkpoints/localisation.json`` (read by the Benchmarks page and BENCHMARKS.md).

    python benchmarks/localisation.py
    python benchmarks/localisation.py --methods GradCAM,EigenCAM
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cxrcore import localisation  # noqa: E402
from cxrcore.data import REPO_ROOT, data_dir, load_boxes  # noqa: E402
from cxrcore.explain import CAM_METHODS  # noqa: E402
from cxrcore.inference import load_all  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=Path, default=REPO_ROOT / "checkpoints")
    p.add_argument("--methods", default="GradCAM", help=f"comma-separated, of {', '.join(CAM_METHODS)}")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    images = localisation.boxed_images(data_dir(), load_boxes())
    if not images:
        sys.exit(f"no boxed NIH image under {data_dir()} (needs BBox_List_2017.csv.gz and nih14_local_*.npz)")
    models, problems = load_all(a.checkpoints)
    shipped = [m for m in models.values() if m.spec.ship]
    for key, why in problems.items():
        print(f"skipped {key}: {why}")
    scores = [s for m in shipped for method in a.methods.split(",")
              for s in localisation.score_model(m, images, method)]
    command = "python benchmarks/localisation.py" + (f" --methods {a.methods}" if a.methods != "GradCAM" else "")
    table = localisation.write(a.checkpoints / localisation.LOCALISATION_FILE, scores, command)
    print(f"{len(images)} boxed images ({sum(len(i.boxes) for i in images)} boxes); "
          f"wrote {a.checkpoints / localisation.LOCALISATION_FILE}")
    print(f"{'dataset/model':<38} {'method':<9} {'subset':<9} {'layer':<22} {'boxes':>5} {'none':>4} "
          f"{'point':>5} {'chance':>6} {'P':>5} {'R':>5} {'F1':>5}")
    for r in table["rows"]:
        print(f"{r['dataset'] + '/' + r['model']:<38} {r['method']:<9} {r['subset']:<9} "
              f"{r['layer'] + ' ' + r['grid']:<22} {r['boxes']:>5} {r['no_localisation']:>4} {r['pointing']:>5.2f} "
              f"{r['chance']:>6.3f} {r['precision']:>5.2f} {r['recall']:>5.2f} {r['f1']:>5.2f}")


if __name__ == "__main__":
    main()
