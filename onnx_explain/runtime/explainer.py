"""Explainer: one ONNX Runtime session over an exported explanation graph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_explain.core.errors import check_finite, first_line
from onnx_explain.core.inputs import check_count, check_images, check_methods, check_targets
from onnx_explain.core.metadata import GraphInfo, check_graph, read_info
from onnx_explain.core.options import GRAPH_OPTIONS
from onnx_explain.core.providers import load_session, resolve_providers
from onnx_explain.core.result import Explanation, Map

# Images per graph run, which bounds memory: a sampled method's points count (32-step integrated gradients
# runs one image at a time), a gradient map takes 64; on CPU, runs of 32 images or more cost the same per
# image, so larger runs would only use more memory (docs/performance.md).
MAX_IMAGES_PER_RUN = 64


class Explainer:
    """Computes logits and maps from a file written by onnx_explain.exporters.export_explainer, without torch.

    Args:
        path: the exported .onnx file.
        providers: ONNX Runtime execution providers ("cuda", "cpu" or full names); None puts CUDA first
            when onnxruntime-gpu sees a GPU, else CPU.
        session_options: passed to onnxruntime.InferenceSession.
        max_images_per_run: the most images the model runs on in one run of the graph, a sampled
            method's points counted (33 per image with 32-step integrated gradients); a larger call runs
            in chunks of whole images, which bounds memory.  None: one run, whatever its size.
        device_id: the GPU the CUDA (or TensorRT) provider runs on.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a valid ONNX file, not an explanation graph, metadata that does not match the
            graph, or an unavailable provider.
        ModelLoadError (a ValueError): ONNX Runtime cannot build a session for the file.

    Example:
        >>> explainer = Explainer("shapenet.onnx")
        >>> result = explainer.explain(images, methods=["gradcam"])
        >>> result["gradcam"].heatmap.shape  # [N, H, W]
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | str | None = None,
                 session_options: ort.SessionOptions | None = None,
                 max_images_per_run: int | None = MAX_IMAGES_PER_RUN, device_id: int = 0) -> None:
        if not isinstance(path, (str, Path)):
            raise ValueError(f"path must be the .onnx file's path, got {type(path).__name__}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no explanation graph at {self.path}")
        if self.path.stat().st_size == 0:
            raise ValueError(f"{self.path} is an empty file, not an ONNX model")
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:  # protobuf raises its own DecodeError types
            raise ValueError(f"{self.path} is not a valid ONNX file: {e}") from e
        self.info: GraphInfo = read_info(model, str(self.path))
        self.max_images_per_run = None if max_images_per_run is None else check_count("max_images_per_run",
                                                                                      max_images_per_run)
        if session_options is None:
            session_options = ort.SessionOptions()
            # ORT warns that it cannot constant-fold CastLike nodes of exported graphs, and logs every failed
            # run on stderr before raising: the raised error says it all, so only fatal messages are logged.
            session_options.log_severity_level = 4
        self.device_id = check_count("device_id", device_id, low=0)
        self.session = load_session(str(self.path), session_options, resolve_providers(providers, self.device_id),
                                    self.path.name)
        check_graph(self.info, self.session, self.path.name)

    @property
    def inputs(self) -> set[str]:
        """Graph inputs, those with a default (reported apart by ONNX Runtime) included."""
        return {i.name for i in (*self.session.get_inputs(), *self.session.get_overridable_initializers())}

    @property
    def methods(self) -> tuple[str, ...]:
        return self.info.methods

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def explain(self, images: np.ndarray, methods: Sequence[str] | str | None = None,
                targets: Sequence[int] | np.ndarray | int | None = None,
                counterfactual: bool | None = None, *, baselines: np.ndarray | float | None = None,
                seed: int | None = None, noise_std: float | None = None,
                lrp_epsilon: float | None = None) -> Explanation:
        """Explain a batch: one run of the graph, or one per chunk of images (see max_images_per_run).

        Args:
            images: float32 [N, C, H, W], preprocessed as the model expects.
            methods: a subset of self.methods; None means all of them.
            targets: int64 [N] classes to explain (-1: the predicted class), one int for all, or None; for
                a file exported with top_k=k, [N, k] (-1 in column j: the j-th highest class) or None.
            counterfactual: True maps, for the CAM family, the regions that argue against the target (the
                gradient at the layer with its sign flipped); None keeps the default set at export.
            baselines: the reference input of deeplift and integrated gradients: a number, one array
                [C, H, W] for the batch, or one per image [N, C, H, W] (the batch then runs image by
                image); None keeps the export's default (zeros unless set).
            seed: the SmoothGrad family's noise is a pure function of this seed (default 0): the same
                seed gives the same maps.
            noise_std: the standard deviation of SmoothGrad's noise, in input units (default: export's).
            lrp_epsilon: the stabiliser of lrp_epsilon (default: the export's, 1e-9 unless set).

        Returns:
            Explanation with .logits, .targets and result[method].heatmap / .raw (with top_k=k, a k axis
            after N: targets [N, k], heatmaps [N, k, H, W]).

        Raises:
            ValueError: wrong shape, dtype, NaN or inf in images or baselines; bad targets; unknown method;
                an input (counterfactual, baselines, seed, ...) that the file's methods do not take.
            NonFiniteResultError (a ValueError): the logits or a map became NaN or inf (the model
                overflowed float32 on these inputs).
        """
        images = check_images(images, self.info.input_shape)
        what = f"channel of {self.info.feature['layer']}" if self.info.feature else "class"
        targets = check_targets(targets, len(images), len(self.info.target_names), self.info.top_k, what)
        maps = self._select(methods)
        names = ["logits", "explained_targets"] + [n for m in maps for n in (m.raw, m.heatmap, m.delta) if n]
        given = {"counterfactual": counterfactual, "baselines": baselines, "seed": seed, "noise_std": noise_std,
                 "lrp_epsilon": lrp_epsilon}
        feeds = {"images": images, "targets": targets}
        for option in GRAPH_OPTIONS:
            value = given[option.name]
            if value is not None:
                if option.name not in self.inputs:
                    raise ValueError(f"{self.path.name} has no {option.name} input: none of its methods "
                                     f"{list(self.methods)} takes it")
                feeds[option.name] = option.check(value, len(images), self.info.input_shape)
        values = dict(zip(names, self.run(names, feeds), strict=True))
        check_finite(values, f"{self.path.name}'s output")
        result = {(m.method, m.layer): Map(m.method, m.layer, values[m.heatmap], values[m.raw], values.get(m.delta))
                  for m in maps}
        return Explanation(values["logits"], values["explained_targets"], result, self.info.target_names)

    def warm_up(self, batch: int = 1) -> None:
        """One run of every output on a batch of zeros: ONNX Runtime allocates its memory arenas and the
        CUDA provider picks its convolution algorithms in the first runs, which a server should not make
        its first client wait for."""
        self.explain(np.zeros((check_count("batch", batch), *self.info.input_shape), np.float32))

    def run_on_device(self, names: list[str], feeds: dict[str, np.ndarray], device: str = "cuda") -> list:
        """The graph's outputs `names` as ONNX Runtime OrtValues left on `device` ("cuda" or "cpu"), with IO
        binding: the inputs cross the bus once, and a server that passes the maps on to another GPU stage
        (or encodes them there) does not copy them back.  `feeds` as `run` takes them (checked, as
        explain checks them); one run, whatever the batch.  OrtValue.numpy() copies one to the host.

        Raises:
            ValueError: an unknown output name or device.
        """
        unknown = sorted(set(names) - {o.name for o in self.session.get_outputs()})
        if unknown or device not in ("cuda", "cpu"):
            raise ValueError(f"run_on_device takes output names of {self.path.name} and device 'cuda' or 'cpu'; "
                             f"got unknown outputs {unknown}, device {device!r}")
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, device_type=device, device_id=self.device_id if device == "cuda" else 0)
        self._run(self.session.run_with_iobinding, binding)
        return binding.get_outputs()

    def images_per_run(self, count: int) -> int:
        """How many of `count` images one run of the graph takes."""
        if self.max_images_per_run is None:
            return max(count, 1)
        return max(1, self.max_images_per_run // self.info.points)

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs `names` (each with the images on axis 0) for checked `feeds`: one run per
        chunk of images, or per image when each image has its own baseline (the graph takes one [1, ...])."""
        count = len(feeds["images"])
        baselines = feeds.get("baselines")
        per_image = baselines is not None and len(baselines) > 1
        size = 1 if per_image else self.images_per_run(count)
        if size >= count:
            return self._run(self.session.run, names, feeds)
        split = ("images", "targets", "baselines") if per_image else ("images", "targets")
        chunks = [self._run(self.session.run, names, {k: v[i:i + size] if k in split else v for k, v in feeds.items()})
                  for i in range(0, count, size)]
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    def _run(self, run, *args):
        """run(*args) (a session's run or run_with_iobinding), ONNX Runtime's errors as ValueError."""
        try:
            return run(*args)
        except Exception as e:  # onnxruntime raises its own pybind11 types; the inputs were checked already
            raise ValueError(f"ONNX Runtime could not run {self.path.name}: {first_line(e)}") from e

    def _select(self, methods):
        if methods is None:
            return list(self.info.maps)
        wanted = check_methods(methods, self.info.methods, f"{self.path.name} was exported with "
                               f"{list(self.info.methods)} (export again with the methods you need)")
        return [m for m in self.info.maps if m.method in wanted]
