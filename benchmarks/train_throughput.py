"""Training throughput: the seed's loop, the project's `fit`, and the matrix-multiply bound.

    python benchmarks/train_throughput.py            # the full table (make bench), a few minutes
    python benchmarks/train_throughput.py --quick    # smoke run: small set, one repeat

On a synthetic 60,000 x 28 x 28 uint8 set (random pixels and labels), with the same model
(the project's NeuralNetwork), optimizer (Adam, as in params.yaml; --optimizer sgd for the
quickstart's own; lr 1e-3 either way), batch size and thread count, one epoch per repeat,
medians over the repeats. The pixels do not change the GEMMs' cost, but the run's history can
change Adam's: moments of units that get no gradient decay into subnormal floats after about
800 steps, which the CPU computes on far more slowly (docs/performance.md).

  (a) seed   the PyTorch quickstart: torchvision.datasets.MNIST (PIL image + ToTensor per
             item) read from IDX files, DataLoader(batch_size=B), the quickstart's train loop;
  (b) fit    classifier.training.train.fit, called as the train stage calls it (InMemorySplit,
             Normalization, TrainParams), one epoch per repeat, first epoch discarded as warm-up;
  (c) bound  the GEMMs of one training step timed with torch.mm at the step's exact shapes
             and thread count (best of several timings): samples/s = batch / (sum of the GEMM times).

Every (method, threads, batch) runs in its own child process, so each peak resident memory
(ru_maxrss) is that configuration's alone and thread settings never leak between them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = PROJECT_ROOT / "benchmarks" / "results" / "train_throughput.json"

IMAGE_SIDE = 28
INPUT_SIZE = IMAGE_SIDE * IMAGE_SIDE
HIDDEN_SIZES = (512, 512)
NUM_CLASSES = 10
LEARNING_RATE = 1e-3
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}  # the project's train.optimizer values -> torch.optim classes
# Roughly MNIST's statistics; the value does not change the speed.
NORMALIZATION = {"mean": 0.1307, "std": 0.3081}
# Validation in (b) runs between the timed epochs; a small val split keeps it under 0.5% of an epoch.
VAL_IMAGES = 256
METHODS = ("fit", "bound", "seed")
PROFILED_IMAGES = 12_800  # enough batches for stable shares; the profiler slows every op down

TARGET_FIT_OVER_SEED = 4.0   # (b) >= 4 x (a) at batch 64
TARGET_FIT_OVER_BOUND = 0.75  # (b) >= 0.75 x (c) at batch 64 and 256
TARGET_PEAK_MB = 1024.0       # peak resident memory of training on 60,000 images


# ---------------------------------------------------------------- FLOPs and GEMM shapes

def layer_shapes(input_size: int = INPUT_SIZE, hidden_sizes=HIDDEN_SIZES, num_classes: int = NUM_CLASSES):
    """(in_features, out_features) of each Linear layer."""
    widths = [input_size, *hidden_sizes, num_classes]
    return list(zip(widths[:-1], widths[1:]))


def step_gemms(batch_size: int, shapes) -> list[tuple[str, int, int, int, str]]:
    """The matrix multiplies of one training step as (name, m, k, n, layout).

    A Linear(i, o) on a batch of B computes y = x W^T (m=B, k=i, n=o); backward computes the
    weight gradient dW = dy^T x (m=o, k=B, n=i) and, except for the first layer, whose input
    (the images) needs no gradient, the input gradient dx = dy W (m=B, k=o, n=i). Layout
    records which operand is a transposed view, as autograd passes them to addmm/mm.
    """
    gemms = []
    for index, (fan_in, fan_out) in enumerate(shapes):
        gemms.append((f"fc{index + 1} forward", batch_size, fan_in, fan_out, "NT"))
        gemms.append((f"fc{index + 1} dW", fan_out, batch_size, fan_in, "TN"))
        if index > 0:
            gemms.append((f"fc{index + 1} dx", batch_size, fan_out, fan_in, "NN"))
    return gemms


def flops_per_sample(shapes) -> dict[str, int]:
    """Multiply-adds count 2 FLOPs. Forward: 2*i*o per layer; backward: 2*i*o for dW on every
    layer plus 2*i*o for dx on every layer but the first. Bias adds, ReLU, the loss and the
    optimizer are element-wise, O(parameters) per batch, not per sample, and left out."""
    forward = sum(2 * fan_in * fan_out for fan_in, fan_out in shapes)
    weight_grads = forward
    input_grads = sum(2 * fan_in * fan_out for fan_in, fan_out in shapes[1:])
    return {"forward": forward, "backward": weight_grads + input_grads,
            "total": forward + weight_grads + input_grads}


# ---------------------------------------------------------------- measurements (child side)

def synthetic_set(count: int, seed: int = 0):
    import torch
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, IMAGE_SIDE, IMAGE_SIDE), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (count,), dtype=torch.int64, generator=generator)
    return images, labels


def write_idx(path: Path, array) -> None:
    """The uncompressed IDX file torchvision's MNIST reads: big-endian header, then uint8 data."""
    import numpy as np
    data = np.asarray(array, dtype=np.uint8)
    header = np.array([0x0800 | data.ndim, *data.shape], dtype=">u4").tobytes()
    path.write_bytes(header + data.tobytes())


def seed_loop_samples_per_second(count: int, batch_size: int, repeats: int, optimizer_name: str = "adam",
                                 device_name: str = "cpu") -> list[float]:
    """(a): the quickstart, verbatim except the printing, over torchvision's MNIST class."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    from classifier.training.model import NeuralNetwork

    images, labels = synthetic_set(count)
    with tempfile.TemporaryDirectory(prefix="seed-mnist-") as root:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        write_idx(raw / "train-images-idx3-ubyte", images.numpy())
        write_idx(raw / "train-labels-idx1-ubyte", labels.numpy())
        # MNIST checks that the test files exist too; it does not read them for train=True.
        write_idx(raw / "t10k-images-idx3-ubyte", images[:10].numpy())
        write_idx(raw / "t10k-labels-idx1-ubyte", labels[:10].numpy())
        training_data = datasets.MNIST(root=root, train=True, download=False, transform=ToTensor())
        del images, labels

        device = device_name  # the quickstart's `device`; gpu_check.py runs the same loop on the GPU
        torch.manual_seed(0)
        model = NeuralNetwork(INPUT_SIZE, HIDDEN_SIZES, NUM_CLASSES).to(device)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = getattr(torch.optim, OPTIMIZERS[optimizer_name])(model.parameters(), lr=LEARNING_RATE)

        def train(dataloader, model, loss_fn, optimizer):
            model.train()
            for batch, (X, y) in enumerate(dataloader):
                X, y = X.to(device), y.to(device)
                pred = model(X)
                loss = loss_fn(pred, y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                if batch % 100 == 0:
                    loss = loss.item()  # the quickstart prints this; the sync is kept, the print is not

        warm_up = DataLoader(Subset(training_data, range(min(count, 20 * batch_size))), batch_size=batch_size)
        train(warm_up, model, loss_fn, optimizer)
        train_dataloader = DataLoader(training_data, batch_size=batch_size)
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            train(train_dataloader, model, loss_fn, optimizer)
            _synchronize(torch.device(device))
            rates.append(count / (time.perf_counter() - started))
    return rates


def train_params_for(batch_size: int, epochs: int, device: str, optimizer_name: str = "adam", **overrides):
    """TrainParams as in params.yaml, with the benchmark's epochs, batch size, device and
    optimizer. Starting from the project's own section keeps any field the schema adds."""
    from classifier.params import TrainParams, load_params

    section = load_params(PROJECT_ROOT / "params.yaml").train.model_dump()
    section.update(epochs=epochs, batch_size=batch_size, optimizer=optimizer_name,
                   learning_rate=LEARNING_RATE, device=device)
    for key, value in overrides.items():
        if key not in TrainParams.model_fields:
            raise SystemExit(f"error: TrainParams has no field {key!r} (fields: {', '.join(TrainParams.model_fields)})")
        section[key] = value
    return TrainParams.model_validate(section)


def fit_samples_per_second(count: int, batch_size: int, repeats: int, device_name: str = "cpu",
                           optimizer_name: str = "adam", **param_overrides) -> dict:
    """(b): classifier.training.train.fit over an InMemorySplit on `device_name`, repeats + 1 epochs.

    Each epoch's time is the interval between consecutive on_epoch calls, on our own clock:
    one training epoch plus validation of VAL_IMAGES images. Epoch 1 is the warm-up. fit's own
    figure (timed around train_epoch alone) is kept beside it as a cross-check.
    """
    import torch

    from classifier.training.split import InMemorySplit, Normalization
    from classifier.training.model import NeuralNetwork
    from classifier.training.train import fit

    device = torch.device(device_name)
    images, labels = synthetic_set(count)
    val_images, val_labels = synthetic_set(VAL_IMAGES, seed=1)
    train_split = InMemorySplit(images, labels).to(device)
    val_split = InMemorySplit(val_images, val_labels).to(device)
    del images, labels
    train_params = train_params_for(batch_size, repeats + 1, device_name, optimizer_name, **param_overrides)

    torch.manual_seed(0)
    model = NeuralNetwork(INPUT_SIZE, HIDDEN_SIZES, NUM_CLASSES).to(device)
    stamps, reported = [], []

    def on_epoch(stats, samples_per_second):
        stamps.append(time.perf_counter())
        reported.append(samples_per_second)

    fit(model, train_split, val_split, Normalization(**NORMALIZATION), train_params, 0, device, on_epoch=on_epoch)
    intervals = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    return {"rates": [count / seconds for seconds in intervals], "fit_reported": reported[1:]}


def _synchronize(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_mm(m: int, k: int, n: int, layout: str, device, dtype, repeats: int, min_seconds: float) -> float:
    """Seconds of one torch.mm(m x k, k x n), operands laid out as autograd has them: the best of
    `repeats` timed blocks. The best, not the median: this is a bound, what the library can do
    at these shapes, and on a shared machine only the best block is free of other work."""
    import torch
    a = torch.randn(k, m, device=device, dtype=dtype).t() if layout[0] == "T" else torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(n, k, device=device, dtype=dtype).t() if layout[1] == "T" else torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    # Calibrate the call count so each timed block is long enough for the clock.
    calls = 1
    while True:
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        _synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            break
        calls *= 2
    times = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        _synchronize(device)
        times.append((time.perf_counter() - started) / calls)
    return min(times)


def mm_bound(batch_size: int, repeats: int, device_name: str = "cpu", dtype_name: str = "float32",
             min_seconds: float = 0.05) -> dict:
    """(c): the training step's GEMMs timed one by one; their sum is the least a step can take."""
    import torch
    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name)
    shapes = layer_shapes()
    gemms = []
    for name, m, k, n, layout in step_gemms(batch_size, shapes):
        seconds = time_mm(m, k, n, layout, device, dtype, repeats, min_seconds)
        gemms.append({"name": name, "m": m, "k": k, "n": n, "seconds": seconds,
                      "gflops": 2 * m * k * n / seconds / 1e9})
    step_seconds = sum(gemm["seconds"] for gemm in gemms)
    flops = flops_per_sample(shapes)["total"]
    return {"rates": [batch_size / step_seconds], "step_seconds": step_seconds,
            "gflops": flops * batch_size / step_seconds / 1e9, "gemms": gemms}


def profile_fit(count: int, batch_size: int, optimizer_name: str = "adam") -> dict:
    """Where (b)'s time goes: one epoch of fit under torch.profiler, split into the optimizer
    step, the GEMMs, zero_grad, the data loader, and the rest (the other ops and Python)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from classifier.training.split import InMemorySplit, Normalization
    from classifier.training.model import NeuralNetwork
    from classifier.params import TrainParams
    from classifier.training.train import fit

    images, labels = synthetic_set(count)
    val_images, val_labels = synthetic_set(VAL_IMAGES, seed=1)
    overrides = {"precision": "fp32"} if "precision" in TrainParams.model_fields else {}
    train_params = train_params_for(batch_size, 1, "cpu", optimizer_name, **overrides)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = NeuralNetwork(INPUT_SIZE, HIDDEN_SIZES, NUM_CLASSES)
    arguments = (InMemorySplit(images, labels), InMemorySplit(val_images, val_labels),
                 Normalization(**NORMALIZATION), train_params, 0, device)
    fit(model, *arguments)  # warm-up, unprofiled
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        fit(model, *arguments)
        wall_us = (time.perf_counter() - started) * 1e6
    events = profiler.key_averages()
    total = lambda prefix: sum(e.cpu_time_total for e in events if e.key.startswith(prefix))  # noqa: E731
    own = lambda *keys: sum(e.self_cpu_time_total for e in events if e.key in keys)  # noqa: E731
    parts = {"optimizer.step": total("Optimizer.step"), "GEMMs (mm, addmm)": own("aten::mm", "aten::addmm"),
             "optimizer.zero_grad": total("Optimizer.zero_grad"), "data loader": total("enumerate(DataLoader)")}
    parts["everything else"] = max(0.0, wall_us - sum(parts.values()))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"rates": [count / wall_us * 1e6], "wall_seconds": wall_us / 1e6,
            "shares": {name: value / wall_us for name, value in parts.items()},
            "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top]}


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_child(method: str, threads: int, batch_size: int, images: int, repeats: int, optimizer_name: str) -> dict:
    import torch
    torch.set_num_threads(threads)
    baseline_mb = peak_rss_mb()
    if method == "seed":
        result = {"rates": seed_loop_samples_per_second(images, batch_size, repeats, optimizer_name)}
    elif method == "fit":
        from classifier.params import TrainParams
        # The bound is fp32 GEMMs and the seed's loop is fp32: so is (b), whatever params.yaml says.
        overrides = {"precision": "fp32"} if "precision" in TrainParams.model_fields else {}
        result = fit_samples_per_second(images, batch_size, repeats, "cpu", optimizer_name, **overrides)
    elif method == "bound":
        result = mm_bound(batch_size, max(repeats, 5))
    elif method == "profile":
        result = profile_fit(min(images, PROFILED_IMAGES), batch_size, optimizer_name)
    else:
        raise SystemExit(f"error: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    result.update(method=method, threads=torch.get_num_threads(), batch_size=batch_size, images=images,
                  optimizer=optimizer_name,
                  peak_rss_mb=peak_rss_mb(), rss_after_import_mb=baseline_mb,
                  samples_per_second=statistics.median(result["rates"]))
    return result


# ---------------------------------------------------------------- orchestration (parent side)

def measure(method: str, threads: int, batch_size: int, images: int, repeats: int, optimizer_name: str) -> dict:
    command = [sys.executable, __file__, "--child", method, "--threads", str(threads), "--optimizer", optimizer_name,
               "--batch-sizes", str(batch_size), "--images", str(images), "--repeats", str(repeats)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH")])))
    # Pin the math libraries too: torch.set_num_threads does not reach every pool they start.
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"error: {method} at {threads} thread(s), batch {batch_size} failed "
                         f"(exit {completed.returncode}):\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores available, {platform.system()} {platform.release()}"


def rows_from(results: list[dict]) -> list[dict]:
    rows = []
    for threads, batch_size in dict.fromkeys((r["threads"], r["batch_size"]) for r in results):
        by_method = {r["method"]: r for r in results if (r["threads"], r["batch_size"]) == (threads, batch_size)}
        seed, fit, bound = (by_method.get(name) for name in ("seed", "fit", "bound"))
        rate = lambda result: result["samples_per_second"] if result else None  # noqa: E731
        ratio = lambda top, bottom: rate(top) / rate(bottom) if top and bottom else None  # noqa: E731
        rows.append({
            "threads": threads, "batch_size": batch_size,
            "seed": rate(seed), "fit": rate(fit), "bound": rate(bound),
            "fit_over_seed": ratio(fit, seed), "fit_over_bound": ratio(fit, bound),
            "bound_gflops": bound["gflops"] if bound else None,
            "seed_peak_mb": seed["peak_rss_mb"] if seed else None,
            "fit_peak_mb": fit["peak_rss_mb"] if fit else None,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    def cell(value, spec, unit=""):
        return "-" if value is None else format(value, spec) + unit
    lines = [
        "| threads | batch | (a) seed loop | (b) project fit | (c) mm bound | (b)/(a) | (b)/(c) | mm GFLOP/s | peak RSS (a) | peak RSS (b) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['threads']} | {row['batch_size']} | {cell(row['seed'], ',.0f')} | {cell(row['fit'], ',.0f')} "
            f"| {cell(row['bound'], ',.0f')} | {cell(row['fit_over_seed'], '.2f')} | {cell(row['fit_over_bound'], '.2f')} "
            f"| {cell(row['bound_gflops'], '.0f')} | {cell(row['seed_peak_mb'], '.0f', ' MB')} | {cell(row['fit_peak_mb'], '.0f', ' MB')} |"
        )
    return "\n".join(lines)


def judge(rows: list[dict]) -> list[tuple[str, bool | None]]:
    """One line per target; None where the run did not measure what the target needs."""
    verdicts = []
    for row in rows:
        where = f"{row['threads']} thread(s), batch {row['batch_size']}"
        if row["batch_size"] == 64 and row["fit_over_seed"] is not None:
            verdicts.append((f"(b)/(a) = {row['fit_over_seed']:.2f} >= {TARGET_FIT_OVER_SEED} at {where}",
                             row["fit_over_seed"] >= TARGET_FIT_OVER_SEED))
        if row["batch_size"] in (64, 256) and row["fit_over_bound"] is not None:
            verdicts.append((f"(b)/(c) = {row['fit_over_bound']:.2f} >= {TARGET_FIT_OVER_BOUND} at {where}",
                             row["fit_over_bound"] >= TARGET_FIT_OVER_BOUND))
        if row["fit_peak_mb"] is not None:
            verdicts.append((f"peak RSS of (b) = {row['fit_peak_mb']:.0f} MB <= {TARGET_PEAK_MB:.0f} MB at {where}",
                             row["fit_peak_mb"] <= TARGET_PEAK_MB))
    return verdicts


def parse_args(argv):
    all_cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 6,000 images and one repeat unless given (the figures are not the measurement)")
    parser.add_argument("--images", type=int, help="training-set size (default: 60000)")
    parser.add_argument("--repeats", type=int, help="timed epochs per measurement (default: 3)")
    parser.add_argument("--batch-sizes", default="64,256", help="comma-separated (default: %(default)s)")
    parser.add_argument("--threads", default=f"1,{all_cores}" if all_cores > 1 else "1",
                        help="comma-separated thread counts (default: 1 and all cores: %(default)s)")
    parser.add_argument("--methods", default=",".join(METHODS), help="subset of %(default)s")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                        help="for (a) and (b) alike: adam (params.yaml's, default) or sgd (the quickstart's)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile (b) at 1 thread per batch size (torch.profiler) and print where the time goes")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results (default: %(default)s)")
    parser.add_argument("--child", choices=METHODS + ("profile",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.images = args.images or (6_000 if args.quick else 60_000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    try:
        args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
        args.threads = [int(count) for count in args.threads.split(",")]
    except ValueError:
        parser.error("--batch-sizes and --threads take comma-separated integers, e.g. 64,256")
    args.methods = args.methods.split(",")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; expected some of {', '.join(METHODS)}")
    if min(args.batch_sizes + args.threads) < 1 or args.images < 1 or args.repeats < 1:
        parser.error("--images, --repeats, --batch-sizes and --threads must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.threads[0], args.batch_sizes[0], args.images, args.repeats,
                                   args.optimizer)))
        return 0

    flops = flops_per_sample(layer_shapes())
    print(f"machine: {machine_description()}; python {platform.python_version()}", flush=True)
    print(f"{args.images:,} synthetic 28x28 uint8 images, {args.repeats} timed epoch(s) per figure, medians; "
          f"model 784-512-512-10, {OPTIMIZERS[args.optimizer]} lr {LEARNING_RATE}", flush=True)
    print(f"FLOPs per training sample: forward {flops['forward']:,} + backward {flops['backward']:,} "
          f"= {flops['total']:,} (GEMMs only)", flush=True)
    results = []
    started = time.perf_counter()
    for threads in args.threads:
        for batch_size in args.batch_sizes:
            for method in (name for name in METHODS if name in args.methods):
                print(f"  measuring {method} at {threads} thread(s), batch {batch_size} ...", file=sys.stderr, flush=True)
                results.append(measure(method, threads, batch_size, args.images, args.repeats, args.optimizer))
    rows = rows_from(results)
    print("\nsamples/s (median); peak RSS of one child process training on the set\n")
    print(format_table(rows))
    verdicts = judge(rows)
    print("\ntargets" + (" (quick run: a smoke test, not the measurement)" if args.quick else "") + ":")
    for text, passed in verdicts:
        print(f"  {'ok  ' if passed else 'MISS'}  {text}")

    profiles = []
    if args.profile:
        for batch_size in args.batch_sizes:
            print(f"  profiling fit at 1 thread, batch {batch_size} ...", file=sys.stderr, flush=True)
            profiles.append(measure("profile", 1, batch_size, args.images, 1, args.optimizer))
    for profiled in profiles:
        print(f"\nwhere (b)'s time goes: torch.profiler, 1 thread, batch {profiled['batch_size']}, "
              f"one epoch of {profiled['images']:,} images ({profiled['samples_per_second']:,.0f} samples/s "
              "with the profiler's overhead)")
        for name, share in profiled["shares"].items():
            print(f"  {share:6.1%}  {name}")
        print("  top ops by self time: " + ", ".join(f"{op['op']} {op['self_ms']:.0f} ms/{op['calls']}"
                                                     for op in profiled["top_ops"]))
    print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine_description(), "images": args.images,
                                       "optimizer": args.optimizer,
                                       "repeats": args.repeats, "quick": args.quick, "flops_per_sample": flops,
                                       "rows": rows, "runs": results, "profiles": profiles}, indent=2) + "\n")
    print(f"wrote {args.output.relative_to(PROJECT_ROOT) if args.output.is_relative_to(PROJECT_ROOT) else args.output}")
    return 1 if args.strict and not all(passed for _, passed in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
