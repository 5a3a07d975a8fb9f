"""Can a small CNN tell the synthetic classes apart at low resolution? (needs torch)

    .venv/bin/python -m benchmarks.synth_cnn_check [--studies 500] [--seed 77] [--input 128]
        [--epochs 6] [--threads 2] [--data DIR]

Generates ``--studies`` small studies (or reuses ``--data`` with a manifest.csv), reads the
four standard views back (file window applied, left breasts mirrored), resizes them to
``--input`` pixels with INTER_AREA and trains a deliberately tiny CNN (5 convolutions,
~40k weights, Adam, cosine schedule) on the first 70% of exams against the reader labels.
Each epoch prints the view accuracy (reader labels) and the exam accuracy on the other 30%
against the true exam class, combining views as the method does (docs/method.md:
average the two views of each breast, the exam gets the denser breast). This is a check
of the data, not the project's model (train/ has the residual network).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from mammo_density.synth import CLASSES, generate
from mammo_density.synth.readback import display_image


def load_views(data: Path, size: int) -> dict[str, np.ndarray]:
    with open(data / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if not r["extra"]]
    exams = {e: i for i, e in enumerate(sorted({r["exam_id"] for r in rows}))}
    xs, reader, true, exam, side = [], [], [], [], []
    for r in rows:
        img = display_image(data / r["path"], apply_window=True)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        xs.append(img[:, ::-1] if r["laterality"] == "L" else img)
        reader.append(CLASSES.index(r["density"]))
        true.append(CLASSES.index(r["true_density"]))
        exam.append(exams[r["exam_id"]])
        side.append(r["laterality"])
    return {"x": np.asarray(xs, np.float32), "reader": np.asarray(reader),
            "true": np.asarray(true), "exam": np.asarray(exam), "side": np.asarray(side)}


def main() -> None:
    import torch
    from torch import nn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=500)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, help="existing synth output to reuse")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="synth-cnn-") as tmp:
        data = args.data or Path(tmp)
        if not (data / "manifest.csv").exists():
            generate(data, studies=args.studies, seed=args.seed, jobs=2)
        d = load_views(data, args.input)
    print(f"{len(d['x'])} views loaded in {time.monotonic() - started:.0f} s", flush=True)
    x = torch.from_numpy(d["x"])[:, None]
    y = torch.from_numpy(d["reader"])
    n_exams = int(d["exam"].max()) + 1
    train = d["exam"] < int(n_exams * 0.7)
    test = ~train

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.LeakyReLU(),
                             nn.MaxPool2d(2))

    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.LeakyReLU(),
        block(8, 16), block(16, 32), block(32, 32), block(32, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    xtr, ytr = x[torch.from_numpy(train)], y[torch.from_numpy(train)]
    xte = x[torch.from_numpy(test)]
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        total = 0.0
        for b in range(0, len(perm), 16):
            idx = perm[b:b + 16]
            xb = xtr[idx].flip(2) if rng.random() < 0.5 else xtr[idx]
            loss = nn.functional.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        model.eval()
        with torch.no_grad():
            prob = torch.softmax(model(xte), 1).numpy()
        ex, sd, tr_ = d["exam"][test], d["side"][test], d["true"][test]
        hits = []
        for e in np.unique(ex):
            breasts = [prob[(ex == e) & (sd == s)].mean(0).argmax() for s in "RL"
                       if ((ex == e) & (sd == s)).any()]
            hits.append(max(breasts) == tr_[ex == e].max())
        view_acc = float((prob.argmax(1) == d["reader"][test]).mean())
        print(f"epoch {epoch}: loss {total / len(perm):.3f}, view accuracy {100 * view_acc:.1f}% "
              f"(reader labels), exam accuracy {100 * np.mean(hits):.1f}% (true class, "
              f"{len(hits)} exams), {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
