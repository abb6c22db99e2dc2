"""The command line: the README's demo, export and explain, and its errors."""

from __future__ import annotations

from onnx_explain.cli import main
from onnx_explain.models.shapes import TEST_SEED, make_shapes
from onnx_explain.render.drawing import save_png, to_rgb8


def test_demo_writes_page_and_scores(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--images", "3", "--score-images", "64"]) == 0
    printed = capsys.readouterr().out
    page = (out / "index.html").read_text()
    for method in ("saliency", "guided_backprop", "gradcam"):
        assert f"{method}" in page and (out / f"002.{method}.png").is_file()
        line = next(ln for ln in printed.splitlines() if ln.strip().startswith(method))
        assert 0.0 <= float(line.split()[-1]) <= 1.0
    assert "pointing game" in printed and str(out.resolve()) in printed


def test_export_then_explain(tmp_path, capsys):
    model = tmp_path / "shapenet.onnx"
    assert main(["export", "shapenet", str(model), "--methods", "gradcam", "saliency"]) == 0
    data = make_shapes(2, TEST_SEED)
    files = [save_png(tmp_path / f"img{i}.png", to_rgb8(img)) for i, img in enumerate(data.images)]
    out = tmp_path / "maps"
    assert main(["explain", str(model), *map(str, files), "--out", str(out), "--methods", "gradcam"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0.gradcam@features.png", "img0.input.png",
                                                     "img1.gradcam@features.png", "img1.input.png"]
    assert "class" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    image = save_png(tmp_path / "img.png", to_rgb8(make_shapes(1, TEST_SEED).images[0]))
    assert main(["explain", str(tmp_path / "none.onnx"), str(image)]) == 2
    assert "error: no explanation graph" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "none.onnx"), "x.png"]) == 2
    assert "error: no image file at x.png" in capsys.readouterr().err
    assert main(["export", "resnet19", str(tmp_path / "m.onnx")]) == 2
    assert "unknown model 'resnet19'" in capsys.readouterr().err


def test_top_k_file_writes_one_overlay_per_target(tmp_path, capsys):
    model = tmp_path / "top2.onnx"
    assert main(["export", "shapenet", str(model), "--methods", "gradcam", "--top-k", "2"]) == 0
    image = save_png(tmp_path / "img.png", to_rgb8(make_shapes(1, TEST_SEED).images[0]))
    out = tmp_path / "maps"
    assert main(["explain", str(model), str(image), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir() if "gradcam" in p.name)
    assert len(names) == 2 and all(".target" in n for n in names)
    assert main(["explain", str(model), str(image), "--out", str(out), "--target", "1"]) == 2
    assert "--target picks one class" in capsys.readouterr().err


def test_relevance_methods_and_their_options(tmp_path, capsys):
    model = tmp_path / "rel.onnx"
    assert main(["export", "shapenet", str(model), "--methods", "deeplift", "integrated_gradients", "smoothgrad",
                 "lrp_epsilon", "--ig-steps", "4", "--ig-method", "riemann_trapezoid", "--noise-samples", "2",
                 "--baseline", "0.5"]) == 0
    image = save_png(tmp_path / "img.png", to_rgb8(make_shapes(1, TEST_SEED).images[0]))
    out = tmp_path / "maps"
    assert main(["explain", str(model), str(image), "--out", str(out), "--baseline", "0.2", "--seed", "3",
                 "--noise-std", "0.1", "--lrp-epsilon", "0.25"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {f"img.{m}.png" for m in ("deeplift", "integrated_gradients", "smoothgrad", "lrp_epsilon")} <= names
    assert main(["export", "shapenet", str(tmp_path / "x.onnx"), "--methods", "integrated_gradients",
                 "--ig-method", "simpson"]) == 2
    assert "unknown integration method 'simpson'" in capsys.readouterr().err
