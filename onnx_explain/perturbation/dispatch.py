"""explain: the one verb of the pure-inference methods, as Explainer.explain is for exported files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnx_explain.core.inputs import check_count, check_images, check_methods, check_targets
from onnx_explain.core.result import Explanation
from onnx_explain.perturbation.classifier import Classifier, classifier
from onnx_explain.perturbation.methods import METHODS, REQUIRED, PerturbationMethod, Settings
from onnx_explain.perturbation.scoring import check_score


def explain(model: str | Path | onnx.ModelProto | Classifier, images: np.ndarray,
            methods: Sequence[str] | str, targets: Sequence[int] | np.ndarray | int | None = None, *,
            score: str = "prob", batch_size: int | None = None, providers=None, **options) -> Explanation:
    """Explain any ONNX classifier's predictions with pure-inference methods: no export, no gradients.

    Each method runs as one ONNX graph built around the model (cached per classifier and settings).

    Args:
        model: a path, an onnx.ModelProto, or onnx_explain.classifier(...) (which also keeps the
            built sessions for the next call).
        images: float32 [N, C, H, W] or [N, H, W, C], as the model takes them.
        methods: names from onnx_explain.perturbation.METHODS: "occlusion", "rise", "eigencam",
            "scorecam", "ablationcam".
        targets: classes to explain, int64 [N] or one int; None or -1: the predicted class.
        score: "prob" (softmax) or "logit" (pre-softmax; a final Softmax in the model is looked
            through): the score whose change the methods measure.
        batch_size: images per model run (bounds memory); None: 32, or the model's fixed batch size.
        providers: ONNX Runtime execution providers ("cuda", "cpu" or full names); None: CUDA when
            present, else CPU.
        **options: the methods' own options: window, stride, baseline (occlusion); n_masks, cell,
            p, seed (rise); layer, layer_layout (eigencam, scorecam, ablationcam).

    Returns:
        Explanation: logits [N, classes] of the unperturbed images, targets int64 [N] (the classes
        explained) and result[method].heatmap float32 [N, H, W] in [0, 1] and .raw.

    Raises:
        ValueError: an unknown method or option, a missing required option, bad images or targets,
            or a model ONNX Runtime cannot run.

    Example:
        >>> result = explain("model.onnx", images, ["occlusion", "rise"], window=16, stride=8)
        >>> result["occlusion"].heatmap.shape  # [N, H, W]
    """
    model = classifier(model)
    chosen = _chosen(methods)
    values = _options(chosen, options)
    images = check_images(images, model.image_shape)
    targets = check_targets(targets, len(images), model.num_classes or 2**62)
    settings = Settings(check_score(score), None if batch_size is None else check_count("batch_size", batch_size),
                        providers)
    if score == "prob" and model.num_classes == 1 and any(m.class_specific for m in chosen):
        raise ValueError("the model has one class, whose softmax probability is always 1: explain it with "
                         "score=\"logit\"")
    outcomes = [m.run(model, images, targets, settings, **values[m.name]) for m in chosen]
    first = next((o for m, o in zip(chosen, outcomes, strict=True) if m.class_specific), outcomes[0])
    maps = {(o.map.method, o.map.layer): o.map for o in outcomes}
    return Explanation(first.logits, first.targets, maps)


def _chosen(methods: Sequence[str] | str) -> list[PerturbationMethod]:
    return [METHODS[m] for m in check_methods(methods, METHODS, f"the pure-inference methods are {sorted(METHODS)}")]


def _options(chosen: list[PerturbationMethod], given: dict) -> dict[str, dict]:
    """Each method's options: the given ones it takes, its defaults for the rest."""
    taken = {o.name for m in chosen for o in m.options}
    unknown = sorted(set(given) - taken)
    if unknown:
        raise ValueError(f"options {unknown} are not taken by {[m.name for m in chosen]}; "
                         f"they take {sorted(taken)}")
    values = {m.name: {o.name: given.get(o.name, o.default) for o in m.options} for m in chosen}
    missing = sorted({name for v in values.values() for name, value in v.items() if value is REQUIRED})
    if missing:
        raise ValueError(f"{[m.name for m in chosen]} need the options {missing}")
    return values
