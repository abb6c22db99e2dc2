"""The demo: export the shipped ShapeNet, explain held-out images, score and show every method."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from onnx_explain.core.inputs import check_count
from onnx_explain.core.progress import progress
from onnx_explain.render.drawing import overlay, save_png, to_rgb8
from onnx_explain.render.pointing import pointing_hits
from onnx_explain.runtime.explainer import Explainer

BATCH = 32
MAX_IMAGES = 10_000  # held-out images the demo generates (about 0.5 GB)
SCALE = 3  # 64-px images are enlarged for the page
# Fewer points than the export defaults (32 steps, 16 copies) keep the demo's ig_* maps (steps x copies
# runs per image) to seconds on a laptop CPU.
IG_STEPS, NOISE_SAMPLES = 16, 8


def run_demo(out: Path, n_show: int = 16, n_score: int = 200) -> dict[str, float]:
    """Write out/index.html with overlays per image and method; print and return each method's
    pointing-game accuracy on `n_score` held-out images."""
    n_show, n_score = check_count("images", n_show), check_count("score_images", n_score)
    if max(n_show, n_score) > MAX_IMAGES:
        raise ValueError(f"the demo shows and scores at most {MAX_IMAGES} images, got {max(n_show, n_score)}")
    from onnx_explain.exporters import METHODS, export_explainer  # the demo exports, so it needs onnx-explain[export]
    from onnx_explain.models.shapenet import INPUT_SHAPE, TARGET_LAYER, load_shapenet
    from onnx_explain.models.shapes import CLASSES, TEST_SEED, make_shapes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "shapenet.onnx"
    print(f"exporting ShapeNet with {sorted(METHODS)} to {path} ...", flush=True)
    export_explainer(load_shapenet(), path, input_shape=INPUT_SHAPE, layers=[TARGET_LAYER],
                     methods=sorted(METHODS), class_names=CLASSES, ig_steps=IG_STEPS, noise_samples=NOISE_SAMPLES)
    explainer = Explainer(path)
    data = make_shapes(max(n_show, n_score), TEST_SEED)
    chunks = range(0, len(data.images), BATCH)
    results = [explainer.explain(data.images[i:i + BATCH]) for i in progress(chunks, len(chunks), "explaining")]
    preds = np.concatenate([r.targets for r in results])
    heatmaps = {m: np.concatenate([r[m].heatmap for r in results]) for m in explainer.methods}
    scores = {m: float(pointing_hits(h[:n_score], data.boxes[:n_score]).mean()) for m, h in heatmaps.items()}
    print(f"classifier accuracy on {n_score} held-out images: {(preds[:n_score] == data.labels[:n_score]).mean():.3f}")
    print(f"pointing game (argmax within 2 px of the object's box), {n_score} held-out images:")
    for m, s in scores.items():
        print(f"  {m:<22} {s:.3f}")
    rows = []
    for i in progress(range(n_show), n_show, "writing overlays"):
        cells = [_cell(out, f"{i:03d}.input.png", to_rgb8(data.images[i]), "input")]
        cells += [_cell(out, f"{i:03d}.{m}.png", overlay(data.images[i], heatmaps[m][i]), m) for m in heatmaps]
        caption = f"true {CLASSES[data.labels[i]]}, predicted {CLASSES[preds[i]]}"
        rows.append(f"<tr><th>{html.escape(caption)}</th>{''.join(cells)}</tr>")
    _write_page(out / "index.html", scores, rows)
    print(f"wrote {n_show} images x {len(heatmaps)} methods to {(out / 'index.html').resolve()}")
    return scores


def _cell(out: Path, name: str, rgb: np.ndarray, label: str) -> str:
    save_png(out / name, rgb, scale=SCALE)
    return f'<td><img src="{name}" alt="{html.escape(label)}"></td>'


def _write_page(path: Path, scores: dict[str, float], rows: list[str]) -> None:
    head = "".join(f"<th>{html.escape(m)}<br>pointing {s:.2f}</th>" for m, s in scores.items())
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>onnx-explain demo</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px;text-align:center}</style>"
        "<h1>onnx-explain: ShapeNet on held-out images</h1>"
        f"<table><tr><th></th><th>input</th>{head}</tr>{''.join(rows)}</table>\n")
