"""GPU check: the project's `fit` with the split resident on the device, against torch.mm's peak.

    python benchmarks/gpu_check.py                        # on a CUDA machine, under 3 minutes
    python benchmarks/gpu_check.py --device cpu --quick   # smoke run of this script without a GPU

For each precision the train params offer (fp32, and bf16 when `train.precision` exists) and
each batch size: samples/s of classifier.train.fit over a synthetic 60,000-image InMemorySplit
moved to the device (batches are gathered there), the FLOP/s that implies, and that as a
fraction of (1) torch.mm's peak on a large square product and (2) torch.mm at the training
step's own GEMM shapes (the bound train_throughput.py uses on the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from train_throughput import (PROJECT_ROOT, fit_samples_per_second, flops_per_sample, layer_shapes,
                              mm_bound, time_mm)

DTYPE_OF_PRECISION = {"fp32": "float32", "bf16": "bfloat16"}
# Stop starting new configurations past this, so the whole check stays under 3 minutes.
TIME_BUDGET_SECONDS = 150


def available_precisions() -> list[str] | None:
    """The values of `train.precision` this benchmark knows, or None when the field does not exist."""
    import typing

    from classifier.params import TrainParams

    field = TrainParams.model_fields.get("precision")
    if field is None:
        return None
    return [value for value in typing.get_args(field.annotation) if value in DTYPE_OF_PRECISION]


def square_peak(device_name: str, dtype_name: str, size: int) -> float:
    """FLOP/s of one size x size x size torch.mm: the device's practical matmul peak."""
    import torch
    seconds = time_mm(size, size, size, "NN", torch.device(device_name), getattr(torch, dtype_name),
                      repeats=5, min_seconds=0.2)
    return 2 * size**3 / seconds


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    parser.add_argument("--images", type=int, help="training-set size (default: 60000)")
    parser.add_argument("--batch-sizes", help="comma-separated (default: 64,256,1024)")
    parser.add_argument("--repeats", type=int, help="timed epochs per figure (default: 3)")
    parser.add_argument("--quick", action="store_true",
                        help="unless given: 6,000 images, one repeat, batch 64 and 256")
    args = parser.parse_args(argv)
    args.images = args.images or (6_000 if args.quick else 60_000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.batch_sizes = args.batch_sizes or ("64,256" if args.quick else "64,256,1024")
    try:
        args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated integers, e.g. 64,256")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: no CUDA device available (torch {torch.__version__}, torch.cuda.is_available() is False).\n"
              "Run this on a machine with an NVIDIA GPU, or pass `--device cpu --quick` to smoke-test the script.",
              file=sys.stderr)
        return 2
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
              f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}", flush=True)
        square = 8192
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads); torch {torch.__version__} -- a smoke run, "
              "not a GPU figure", flush=True)
        square = 1024
    flops = flops_per_sample(layer_shapes())["total"]
    print(f"{args.images:,} images resident on {device}, {args.repeats} timed epoch(s) per figure (median); "
          f"{flops:,} FLOPs per training sample", flush=True)

    started = time.perf_counter()
    rows, skipped = [], []
    precisions = available_precisions()
    if precisions is None:
        print("note: TrainParams has no `precision` field: measuring fp32 only", flush=True)
    for precision in precisions or ["fp32"]:
        dtype_name = DTYPE_OF_PRECISION[precision]
        peak = square_peak(args.device, dtype_name, square)
        print(f"torch.mm {square}x{square} {dtype_name}: {peak / 1e12:.2f} TFLOP/s", flush=True)
        overrides = {} if precisions is None else {"precision": precision}
        for batch_size in args.batch_sizes:
            if time.perf_counter() - started > TIME_BUDGET_SECONDS:
                skipped.append(f"{precision} batch {batch_size}")
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            measured = fit_samples_per_second(args.images, batch_size, args.repeats, args.device, **overrides)
            rate = statistics.median(measured["rates"])
            bound = mm_bound(batch_size, repeats=5, device_name=args.device, dtype_name=dtype_name)
            rows.append({
                "precision": precision, "batch": batch_size, "rate": rate,
                "tflops": rate * flops / 1e12, "of_peak": rate * flops / peak,
                "bound": bound["rates"][0], "of_bound": rate / bound["rates"][0],
                "memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            })
            print(f"  {precision} batch {batch_size}: {rate:,.0f} samples/s", flush=True)

    print("\n| precision | batch | samples/s | TFLOP/s | of mm peak | mm bound at step shapes | of bound | device memory |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        memory = "-" if row["memory_mb"] is None else f"{row['memory_mb']:,.0f} MB"
        print(f"| {row['precision']} | {row['batch']} | {row['rate']:,.0f} | {row['tflops']:.3f} | {row['of_peak']:.1%} "
              f"| {row['bound']:,.0f} | {row['of_bound']:.1%} | {memory} |")
    if skipped:
        print(f"\nskipped to stay under {TIME_BUDGET_SECONDS} s: {', '.join(skipped)}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s (project: {PROJECT_ROOT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
