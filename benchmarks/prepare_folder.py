"""Benchmark: a cold snapshot + download + prepare of an ImageFolder tree of 60,000 28x28 PNGs.

    python benchmarks/prepare_folder.py [--quick] [--images N]

Writes the tree once into a temporary folder (not timed): MNIST-5k's 5,000 digits, each repeated
with a different 1-pixel mark so that every file is a distinct image, one folder per digit. Then
runs the three stages' commands as dvc.yaml chains them (`classifier.data.snapshot`, `.download`,
`.prepare` with an empty decoded cache), each a child process, three times, and reports the
median wall time of the three together and the largest child's peak resident memory: every file
read, hashed, packed and decoded. Targets (issues 11 and 32): at most 20 s, peak under 1 GB.
The incremental and no-op costs under real DVC are benchmarks/folder_pipeline.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from classifier.data.download import bundled_mnist_5k_path  # noqa: E402
from classifier.data.prepare import read_mnist_5k  # noqa: E402

TARGET_S, TARGET_MB = 20.0, 1024


def write_tree(root: Path, count: int) -> None:
    images, labels = read_mnist_5k(bundled_mnist_5k_path())
    for index in range(count):
        image = images[index % len(images)].copy()
        copy = index // len(images)
        image[0, copy % 28] = 1 + copy // 28  # distinct files, the digit untouched
        folder = root / str(labels[index % len(images)])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{index:05d}.png")


def run_prepare(tree: Path, out: Path, params: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one cold snapshot + download + prepare, each a fresh child process."""
    script = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
              "code = subprocess.call(sys.argv[1:]); wall = time.perf_counter() - start; "
              "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024; "
              "print(wall, peak); sys.exit(code)")
    listing, raw = out.with_name(f"{out.name}-listing.csv"), out.with_name(f"{out.name}-raw")
    stages = [["classifier.data.snapshot", str(listing), "--folder", str(tree)],
              ["classifier.data.download", str(raw), "--folder", str(tree), "--listing", str(listing)],
              ["classifier.data.prepare", str(raw), str(out), "--decoded-cache", str(out.with_name(f"{out.name}-decoded"))]]
    wall, peak = 0.0, 0.0
    for stage in stages:
        result = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", *stage, "--params", str(params)],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if result.returncode != 0:
            raise SystemExit(f"{stage[0]} failed:\n{result.stderr}")
        stage_wall, stage_peak = map(float, result.stdout.split())
        wall, peak = wall + stage_wall, max(peak, stage_peak)
    return wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 images, one run (a smoke test)")
    parser.add_argument("--images", type=int, default=60_000)
    args = parser.parse_args()
    count, repeats = (10_000, 1) if args.quick else (args.images, 3)
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        write_tree(scratch / "tree", count)
        print(f"wrote {count} PNGs in {time.perf_counter() - started:.1f} s (not timed)")
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"].update(dataset="folder", folder=str(scratch / "tree"))
        (scratch / "params.yaml").write_text(yaml.safe_dump(params))
        runs = [run_prepare(scratch / "tree", scratch / f"out{i}", scratch / "params.yaml") for i in range(repeats)]
        meta = json.loads((scratch / "out0" / "meta.json").read_text())
    wall = statistics.median(r[0] for r in runs)
    peak = max(r[1] for r in runs)
    print(f"snapshot + download + prepare, {count} PNGs ({meta['samples']}): median wall {wall:.2f} s of {repeats} "
          f"({', '.join(f'{r[0]:.2f}' for r in runs)}), peak RSS {peak:.0f} MB; "
          f"targets <= {TARGET_S:.0f} s: {'met' if wall <= TARGET_S else 'MISSED'}, "
          f"< {TARGET_MB} MB: {'met' if peak < TARGET_MB else 'MISSED'}")


if __name__ == "__main__":
    main()
