"""GPU check: the seed's loop and the project's `fit` on one device, against torch.mm's bounds.

    python benchmarks/gpu_check.py                        # on a CUDA machine, under 3 minutes
    python benchmarks/gpu_check.py --device cpu --quick   # smoke run of this script without a GPU

In one run: (a) the PyTorch quickstart's loop on the same device (fp32, torchvision's MNIST
class over IDX files, one timed epoch), then for each precision (fp32, bf16) and batch size
(b) classifier.training.train.fit over a synthetic 60,000-image InMemorySplit resident on the device:
on CUDA with Adam, the training step captured in a CUDA graph (classifier.training.train.CapturedSteps);
the FLOP/s that implies, as a fraction of torch.mm's peak on a large square product and of
torch.mm at the step's own GEMM shapes (the bound), and the device memory it peaked at.
`--compile` adds (b) with the model wrapped in torch.compile(mode="reduce-overhead") and the
step left eager, to compare the two ways of cutting launch overhead on the same GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from train_throughput import (PROJECT_ROOT, fit_samples_per_second, flops_per_sample, layer_shapes,
                              mm_bound, seed_loop_samples_per_second, time_mm)

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


def fit_variant(images: int, batch_size: int, repeats: int, device_name: str, compiled: bool, overrides: dict) -> dict:
    """(b) as the train stage runs it, or with the model under torch.compile(mode="reduce-overhead"),
    which records CUDA graphs of its own for forward and backward; the captured step is switched off
    for that run, so the two ways of cutting launch overhead are timed on the same loop."""
    if not compiled:
        return fit_samples_per_second(images, batch_size, repeats, device_name, **overrides)
    import torch

    import classifier.training.train as train
    from classifier.training import model as model_module

    plain_network, plain_captures = model_module.NeuralNetwork, train.captures_step
    train.captures_step = lambda device, train_params: False

    def compiled_network(*args, **kwargs):
        return torch.compile(plain_network(*args, **kwargs), mode="reduce-overhead")

    model_module.NeuralNetwork = compiled_network  # fit_samples_per_second imports it when called
    try:
        return fit_samples_per_second(images, batch_size, repeats, device_name, **overrides)
    finally:
        model_module.NeuralNetwork, train.captures_step = plain_network, plain_captures


def fit_row(method: str, precision: str, batch_size: int, rate: float, flops: int, peak: float, bound: dict,
            device) -> dict:
    import torch
    return {"method": method, "precision": precision, "batch": batch_size, "rate": rate,
            "tflops": rate * flops / 1e12, "of_peak": rate * flops / peak,
            "bound": bound["rates"][0], "of_bound": rate / bound["rates"][0],
            "memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    parser.add_argument("--images", type=int, help="training-set size (default: 60000)")
    parser.add_argument("--batch-sizes", help="comma-separated (default: 64,256,1024)")
    parser.add_argument("--repeats", type=int, help="timed epochs per figure (default: 3)")
    parser.add_argument("--seed-batch-sizes", help="batch sizes for (a), the seed's loop (default: 64,256; --quick: 64)")
    parser.add_argument("--compile", action="store_true",
                        help="also time fit with torch.compile(mode='reduce-overhead') instead of the CUDA graph")
    parser.add_argument("--quick", action="store_true",
                        help="unless given: 6,000 images, one repeat, batch 64 and 256")
    args = parser.parse_args(argv)
    args.images = args.images or (6_000 if args.quick else 60_000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.batch_sizes = args.batch_sizes or ("64,256" if args.quick else "64,256,1024")
    args.seed_batch_sizes = args.seed_batch_sizes or ("64" if args.quick else "64,256")
    try:
        args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
        args.seed_batch_sizes = [int(size) for size in args.seed_batch_sizes.split(",")]
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
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        print(f"device memory: {total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free", flush=True)
    for batch_size in args.seed_batch_sizes:
        rate = statistics.median(seed_loop_samples_per_second(args.images, batch_size, 1, device_name=args.device))
        rows.append({"method": "(a) seed loop", "precision": "fp32", "batch": batch_size, "rate": rate,
                     "tflops": rate * flops / 1e12, "of_peak": None, "bound": None, "of_bound": None, "memory_mb": None})
        print(f"  (a) seed loop fp32 batch {batch_size}: {rate:,.0f} samples/s", flush=True)
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
            bound = mm_bound(batch_size, repeats=5, device_name=args.device, dtype_name=dtype_name)
            for method, compiled in [("(b) fit", False)] + ([("(b) fit, torch.compile", True)] if args.compile else []):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                measured = fit_variant(args.images, batch_size, args.repeats, args.device, compiled, overrides)
                rows.append(fit_row(method, precision, batch_size, statistics.median(measured["rates"]), flops, peak,
                                    bound, device))
                print(f"  {method} {precision} batch {batch_size}: {rows[-1]['rate']:,.0f} samples/s", flush=True)

    print("\n| method | precision | batch | samples/s | TFLOP/s | of mm peak | mm bound at step shapes | of bound | device memory |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    share = lambda value: "-" if value is None else f"{value:.1%}"  # noqa: E731
    for row in rows:
        memory = "-" if row["memory_mb"] is None else f"{row['memory_mb']:,.0f} MB"
        bound = "-" if row["bound"] is None else f"{row['bound']:,.0f}"
        print(f"| {row['method']} | {row['precision']} | {row['batch']} | {row['rate']:,.0f} | {row['tflops']:.3f} "
              f"| {share(row['of_peak'])} | {bound} | {share(row['of_bound'])} | {memory} |")
    if skipped:
        print(f"\nskipped to stay under {TIME_BUDGET_SECONDS} s: {', '.join(skipped)}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s (project: {PROJECT_ROOT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
