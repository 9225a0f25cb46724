"""Model cost on this machine: parameters, FLOPs per sample, CPU training and inference speed.

Achieved GFLOP/s is set against a large matmul timed in the same run, so a slow model reads as
"x% of what this CPU can do" rather than a bare number. FLOPs are PyTorch's own count.
Plain script, no pass/fail:  .venv/bin/python benchmarks/bench_models.py [--models ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import precision
from common.models import MODELS, build_model, describe
from common.training import masked_bce

N_CLASSES = 7


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA runs asynchronously: wait for the work before the clock
        torch.cuda.synchronize(device)


CPU = torch.device("cpu")


def timed(fn, repeats: int, device: torch.device = CPU) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def matmul_gflops(
    device: torch.device, n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, repeats, device) / 1e9


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, number_format: str):
    """One step as common.training takes it: the forward pass in ``number_format``."""
    y = torch.randint(0, 2, (len(x), N_CLASSES), device=x.device).float()
    mask = torch.ones_like(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(number_format, x.device):
            logits = model(x).float()
        masked_bce(logits, y, mask).backward()
        optimizer.step()

    return step


def bench(args: argparse.Namespace, name: str, device: torch.device) -> dict:
    length, batch, steps = args.length, args.batch_size, args.steps
    model = build_model(name, n_classes=N_CLASSES, input_length=length, width=args.width)
    model.to(device)
    n_params, fwd_flops = describe(model, length)
    x = torch.randn(batch, 12, length, device=device)

    model.train()
    step = train_step_fn(model, x, args.precision)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    train_flops = counter.get_total_flops() / batch
    train_s = timed(step, steps, device)

    model.eval()
    with torch.inference_mode(), precision.autocast(args.precision, device):
        infer_s = timed(lambda: model(x), steps, device)
    return {
        "params": n_params,
        "fwd_mflops": fwd_flops / 1e6,
        "train_sps": batch / train_s,
        "train_gflops": train_flops * batch / train_s / 1e9,
        "infer_sps": batch / infer_s,
        "infer_gflops": fwd_flops * batch / infer_s / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--length", type=int, default=1000, help="samples (100 Hz x 10 s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16"), help="as training.precision"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; on {on}"
    )
    peak = matmul_gflops(device)
    print(f"reference: 2048x2048 float32 matmul {peak:.1f} GFLOP/s (the %peak columns)")
    if args.precision == "bf16":
        low = matmul_gflops(device, dtype=torch.bfloat16)
        print(f"           2048x2048 bfloat16 matmul {low:.1f} GFLOP/s")
    print(
        f"input 12 x {args.length}, batch {args.batch_size}, width {args.width}, {args.precision}\n"
    )
    header = (
        f"{'model':<16}{'params':>12}{'fwd MFLOP':>11}{'train/s':>9}{'train GF/s':>11}"
        f"{'%peak':>7}{'infer/s':>9}{'infer GF/s':>11}{'%peak':>7}"
    )
    print(header)
    print("-" * len(header))
    for name in args.models:
        r = bench(args, name, device)
        print(
            f"{name:<16}{r['params']:>12,}{r['fwd_mflops']:>11.1f}{r['train_sps']:>9.1f}"
            f"{r['train_gflops']:>11.1f}{100 * r['train_gflops'] / peak:>6.0f}%"
            f"{r['infer_sps']:>9.1f}{r['infer_gflops']:>11.1f}"
            f"{100 * r['infer_gflops'] / peak:>6.0f}%",
            flush=True,
        )


if __name__ == "__main__":
    main()
