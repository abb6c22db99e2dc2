"""Reproduce models/shapenet.pt: python -m onnx_explain.models.train  (about 5 minutes on 2 CPU cores)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn

from onnx_explain.models.shapenet import WEIGHTS, ShapeNet
from onnx_explain.models.shapes import CLASSES, TEST_SEED, TRAIN_SEED, make_shapes


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(c)).argmax(1) for c in np.array_split(images, 16)])
    return float((pred.numpy() == labels).mean())


def train(n_train: int, epochs: int, seed: int = 0) -> tuple[ShapeNet, float]:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    train_set, test_set = make_shapes(n_train, TRAIN_SEED), make_shapes(1000, TEST_SEED)
    x, y = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)
    model = ShapeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (n_train // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        for i in range(n_train // 64):
            idx = perm[i * 64:(i + 1) * 64]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # every class is mirror-symmetric
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, test_set.images, test_set.labels)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out accuracy {acc:.3f}", flush=True)
    return model.eval(), acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    model, acc = train(args.n_train, args.epochs)
    torch.save(model.state_dict(), WEIGHTS)
    card = {"classes": list(CLASSES), "held_out_accuracy": acc, "held_out_images": 1000,
            "n_train": args.n_train, "epochs": args.epochs}
    WEIGHTS.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {WEIGHTS} (held-out accuracy {acc:.3f})")


if __name__ == "__main__":
    main()
