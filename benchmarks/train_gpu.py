"""Training throughput of the per-view network, and the time of a seed-scale run.

Measures training images/s of :class:`DensityResNet` (forward + backward + SGD step) at a
given input size, with AMP and channels_last on CUDA, on synthetic tensors (data loading is
not timed: training reads cached preprocessed arrays). From it, the time of the method's
seed-scale run: 1,356 exams x 4 views x 100 epochs (+ a validation pass per epoch).

    python benchmarks/train_gpu.py --size 650 --batch-size 32 --steps 50    # on a GPU
    python benchmarks/train_gpu.py --size 128 --width 8 --steps 5 --device cpu  # smoke

Prints one JSON line (card, images/s, estimated seed-scale minutes).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mammo_density.train.model import DensityResNet

SEED_EXAMS = 1356  # the method's dense/non-dense training set
VIEWS = 4
EPOCHS = 100
VAL_EXAMS = 120


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=650)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = cuda and not args.no_amp
    cl = cuda and not args.no_channels_last
    torch.backends.cudnn.benchmark = True
    model = DensityResNet(width=args.width).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    x = torch.randn(args.batch_size, 1, args.size, args.size, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (args.batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    def infer() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            model(x)

    def timed(fn, n: int) -> float:
        for _ in range(args.warmup):
            fn()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    model.train()
    t_train = timed(step, args.steps)
    model.eval()
    t_eval = timed(infer, max(1, args.steps // 2))
    train_ips = args.batch_size / t_train
    eval_ips = args.batch_size / t_eval
    seconds = VIEWS * EPOCHS * (SEED_EXAMS / train_ips + VAL_EXAMS / eval_ips)
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "input": args.size, "width": args.width, "batch": args.batch_size, "amp": amp,
        "channels_last": cl, "compile": args.compile,
        "train_images_per_s": round(train_ips, 1), "eval_images_per_s": round(eval_ips, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda
        else None,
        "seed_scale_minutes_one_device": round(seconds / 60, 1),
        "seed_scale": f"{SEED_EXAMS} exams x {VIEWS} views x {EPOCHS} epochs",
    }))


if __name__ == "__main__":
    main()
