"""Class model visualisation (Simonyan et al., 2014): the image a classifier finds most typical of a class,
found by gradient ascent with the exported saliency graph alone (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_explain.core.inputs import check_count
from onnx_explain.core.progress import progress
from onnx_explain.runtime.explainer import Explainer


@dataclass(frozen=True)
class ClassModel:
    """image: float32 [C, H, W] in the model's input space; scores: the class logit before each step and
    after the last (steps + 1 values)."""

    image: np.ndarray
    scores: np.ndarray


def class_model(explainer: Explainer, target: int, steps: int = 200, lr: float = 1.0, l2: float = 1e-3,
                init: np.ndarray | None = None, show_progress: bool = True) -> ClassModel:
    """Maximise S_c(I) - l2 * ||I||^2 over the image I by gradient ascent on the pre-softmax score S_c.

    Each step is one run of the exported graph: its `saliency` output is dS_c/dI, so the update is
    I <- I + lr * (dS_c/dI - 2 * l2 * I).

    Args:
        explainer: over a file exported with the "saliency" method.
        target: the class index.
        steps: ascent steps.
        lr: step size.
        l2: weight of the L2 penalty (Simonyan et al.'s lambda).
        init: [C, H, W] start image; zeros (the mean image of zero-centred inputs) by default.
        show_progress: draw a progress bar on stderr.

    Returns:
        ClassModel with the image and the score trajectory.

    Raises:
        ValueError: the file has no saliency map or does not explain one class per image, the target is out
            of range, or bad step settings.

    Example:
        >>> picture = class_model(Explainer("shapenet.onnx"), target=2, steps=100).image
    """
    if not isinstance(explainer, Explainer):
        raise TypeError(f"class_model takes an Explainer (Explainer(path)), got {type(explainer).__name__}")
    if "saliency" not in explainer.methods:
        raise ValueError(f"class_model needs the saliency gradient; {explainer.path.name} was exported with "
                         f"{list(explainer.methods)} (export it with methods including 'saliency')")
    if explainer.info.feature or explainer.info.top_k != 1:
        kind = "feature targets" if explainer.info.feature else f"top_k={explainer.info.top_k}"
        raise ValueError(f"class_model ascends one class's logit; {explainer.path.name} was exported with {kind} "
                         "(export saliency with one class target per image)")
    classes = explainer.info.num_classes
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)) or not 0 <= target < classes:
        raise ValueError(f"target must be a class index, an integer in 0..{classes - 1}; got {target!r}")
    steps = check_count("steps", steps)
    for name, value, low in (("lr", lr, "> 0"), ("l2", l2, ">= 0")):
        positive = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)) and (
            value > 0 if low == "> 0" else value >= 0)
        if not positive or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number {low}, got {value!r}")
    shape = explainer.info.input_shape
    try:
        image = np.zeros(shape, np.float32) if init is None else np.array(init, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise ValueError(f"init must be a float array [C, H, W] = {list(shape)}, got {type(init).__name__}") from e
    if image.shape != tuple(shape) or not np.isfinite(image).all():
        raise ValueError(f"init must be finite, [C, H, W] = {list(shape)}; got shape {list(image.shape)}"
                         f"{'' if np.isfinite(image).all() else ' with NaN or inf values'}")
    scores = []
    rounds = range(steps)
    for _ in progress(rounds, steps, "class model") if show_progress else rounds:
        try:
            result = explainer.explain(image[None], methods=["saliency"], targets=[int(target)])
        except ValueError as e:  # the image left float32's range: lr or l2 too large for this model
            raise ValueError(f"the ascent diverged after {len(scores)} steps (lower lr={lr} or l2={l2}): {e}") from e
        scores.append(float(result.logits[0, target]))
        image = image + lr * (result["saliency"].raw[0] - 2 * l2 * image)
    scores.append(float(explainer.explain(image[None], methods=["saliency"], targets=[int(target)]).logits[0, target]))
    return ClassModel(image.astype(np.float32), np.array(scores, np.float32))
