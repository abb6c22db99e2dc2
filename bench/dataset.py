"""Explaining a dataset on Ray Data: images/s for the in-process loop, one actor and two actors.

Writes N images of the shipped dataset as PNG files, then times, in one run: a plain loop that reads,
decodes and explains them in this process with one Explainer; explain_dataset with one actor; and with
two actors of half a CPU each (on a 2-core machine the pool must leave a CPU to the readers).  Prints
images/s and the resident memory of each actor (read from /proc while the pool runs).
Run: python bench/dataset.py [--images 400] [--methods gradcam saliency] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray

from onnx_explain.datasets.ray_explain import explain_dataset
from onnx_explain.exporters import export_explainer
from onnx_explain.models.shapenet import INPUT_SHAPE, TARGET_LAYER, load_shapenet
from onnx_explain.models.shapes import CLASSES, TEST_SEED, make_shapes
from onnx_explain.render.drawing import save_png, to_rgb8
from onnx_explain.serving.service import Service


def in_process(model: Path, folder: Path, methods: list[str], batch_size: int) -> float:
    service = Service(model, providers="cpu")
    files = sorted(folder.iterdir())
    began = time.perf_counter()
    for i in range(0, len(files), batch_size):
        x = np.stack([service.prepare(f.read_bytes(), f.name)[1] for f in files[i:i + batch_size]])
        service.explain_images(x, methods)
    return len(files) / (time.perf_counter() - began)


def on_ray(model: Path, folder: Path, methods: list[str], batch_size: int, actors: int, cpus: float) -> tuple:
    """(images/s, resident MB of each actor at its largest)."""
    peak: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid, mb in _actor_memory().items():
                peak[pid] = max(mb, peak.get(pid, 0.0))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    began = time.perf_counter()
    count = explain_dataset(model, str(folder), methods=methods, batch_size=batch_size, concurrency=actors,
                            cpus_per_actor=cpus).count()
    elapsed = time.perf_counter() - began
    done.set()
    watcher.join()
    return count / elapsed, sorted(peak.values())


def _actor_memory() -> dict[int, float]:
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                rss = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS"))
                found[int(proc.name)] = int(rss.split()[1]) / 1024
        except (OSError, StopIteration):
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--methods", nargs="+", default=["gradcam", "saliency"])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, model = Path(tmp) / "images", Path(tmp) / "shapenet.onnx"
        folder.mkdir()
        for i, image in enumerate(make_shapes(args.images, TEST_SEED).images):
            save_png(folder / f"{i:05d}.png", to_rgb8(image))
        export_explainer(load_shapenet(), model, input_shape=INPUT_SHAPE, layers=[TARGET_LAYER], methods=args.methods,
                         class_names=CLASSES)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            explain_dataset(model, str(folder), methods=args.methods, concurrency=1).count()  # warm-up: workers
            rows = {"in-process loop": (in_process(model, folder, args.methods, args.batch_size), [])}
            rows["Ray Data, 1 actor (1 CPU)"] = on_ray(model, folder, args.methods, args.batch_size, 1, 1)
            rows["Ray Data, 2 actors (0.5 CPU each)"] = on_ray(model, folder, args.methods, args.batch_size, 2, 0.5)
        finally:
            ray.shutdown()
    print(f"{args.images} images of ShapeNet ({args.methods}), batch {args.batch_size}, ray {ray.__version__}")
    for label, (rate, memory) in rows.items():
        per_actor = ", ".join(f"{mb:.0f} MB" for mb in memory) or "-"
        print(f"  {label:36s} {rate:8.1f} images/s   memory per actor: {per_actor}")


if __name__ == "__main__":
    main()
