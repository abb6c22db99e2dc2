"""Whole datasets on Ray Data, on a local Ray (2 CPUs) the tests start and shut down: 200 images of the
shipped dataset and a few corrupt files, read from a folder and from a Parquet table; every input is
one row, corrupt files are error rows, and the maps equal the in-process Explainer's within float16
rounding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from onnx_explain.cli import main
from onnx_explain.datasets.ray_explain import explain_dataset
from onnx_explain.models.shapes import TEST_SEED, make_shapes
from onnx_explain.render.drawing import save_png, to_rgb8
from onnx_explain.serving.service import Service

FLOAT16 = 2**-11  # float16's rounding of values in [0, 1]
CORRUPT = {"empty.png": b"", "text.png": b"not an image", "truncated.png": None}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, image in enumerate(make_shapes(200, TEST_SEED).images):
        save_png(folder / f"{i:03d}.png", to_rgb8(image))
    for name, data in CORRUPT.items():
        (folder / name).write_bytes(data if data is not None else (folder / "000.png").read_bytes()[:60])
    return folder


def rows(out) -> dict[str, dict]:
    found = ray.data.read_parquet(str(out)).take_all()
    by_path = {r["path"].rsplit("/", 1)[-1]: r for r in found}
    assert len(by_path) == len(found), "every input appears exactly once"
    return by_path


def check_against_the_explainer(path, folder, found: dict, methods) -> None:
    service = Service(path, providers="cpu")
    names = sorted(n for n in found if n not in CORRUPT)
    for chunk in range(0, len(names), 50):
        batch = names[chunk:chunk + 50]
        x = np.stack([service.prepare((folder / n).read_bytes(), n)[1] for n in batch])
        want = service.explain_images(x, methods)
        for k, name in enumerate(batch):
            row = found[name]
            assert row["error"] == "" and row["predicted"] == int(want.logits[k].argmax())
            for method in methods:
                key = next(f"{m}@{layer}" if layer else m for m, layer in want.maps if m == method)
                got = np.asarray(row[f"{key}.heatmap"], np.float32)
                assert np.abs(got - want[method].heatmap[k]).max() <= FLOAT16, (name, method)


def test_folder_of_images(exported, images, tmp_path, local_ray):
    path = exported("shapenet").path
    out = tmp_path / "out"
    explain_dataset(path, str(images), methods=["gradcam", "saliency"], batch_size=32, concurrency=1,
                    overlays=tmp_path / "overlays").write_parquet(str(out))
    found = rows(out)
    assert len(found) == 203
    for name in CORRUPT:
        row = found[name]
        assert row["error"] and row["predicted"] == -1 and np.isnan(row["probability"])
        assert np.asarray(row["gradcam@features.heatmap"]).size == 0 and list(row["saliency.box"]) == [-1] * 4
    check_against_the_explainer(path, images, found, ["gradcam", "saliency"])
    assert (tmp_path / "overlays" / "007.gradcam@features.png").is_file()


def test_parquet_table_and_the_command_line(exported, images, tmp_path, local_ray, capsys):
    path = exported("shapenet").path
    names = sorted(p.name for p in images.iterdir())[:40] + list(CORRUPT)
    table = pa.table({"path": names, "image": [(images / n).read_bytes() for n in names]})
    pq.write_table(table, tmp_path / "images.parquet")
    out = tmp_path / "out"
    assert main(["explain-dataset", str(path), str(tmp_path / "images.parquet"), str(out), "--methods", "gradcam",
                 "--resolution", "input", "--batch-size", "16"]) == 0
    assert "43 rows" in capsys.readouterr().out
    found = rows(out)
    assert sorted(found) == sorted(names) and sum(bool(r["error"]) for r in found.values()) == len(CORRUPT)
    check_against_the_explainer(path, images, found, ["gradcam"])  # the images are 64x64: input = map size
    with pytest.raises(ValueError, match="resolution must be one of"):
        explain_dataset(path, str(images), resolution="full")
    with pytest.raises(ValueError, match="leave no CPU of the cluster's 2 to read"):
        explain_dataset(path, str(images), concurrency=2)


def test_an_actor_that_dies_is_restarted_without_duplicate_rows(exported, images, local_ray):
    """SIGKILL the pool's actor while it works: Ray restarts it and retries its batch, and every input
    still appears exactly once."""
    import os
    import signal
    import threading
    from pathlib import Path

    killed = []

    def kill_first_worker() -> None:
        for _ in range(600):
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                        threading.Event().wait(1.0)  # let it take a batch first
                        os.kill(int(proc.name), signal.SIGKILL)
                        killed.append(int(proc.name))
                        return
                except OSError:
                    continue
            threading.Event().wait(0.05)

    watcher = threading.Thread(target=kill_first_worker)
    watcher.start()
    found = explain_dataset(exported("shapenet").path, str(images), methods=["gradcam"], batch_size=8).take_all()
    watcher.join()
    assert killed, "the actor was never seen"
    names = [r["path"].rsplit("/", 1)[-1] for r in found]
    assert len(names) == len(set(names)) == 203
