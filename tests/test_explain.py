"""`dogcat explain` and the report's Grad-CAM: PNGs per image, heatmaps that depend on the class, the layer rule,
exports (safetensors explained, ONNX / TorchScript refused), and a report that renders with or without heatmaps."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import dogcat
from dogcat.cli import main
from dogcat.models import build_model
from dogcat.models.gradcam import GradCamError, explainer, gradcam, pick_layer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny):
    from datagen import make_folder

    root = tmp_path_factory.mktemp("explain")
    make_folder(root / "train", classes=("ant", "bee", "cow"), n_per_class=6)
    result = dogcat.train(**tiny(root, root / "runs", env="r", max_epoch=2))
    return root, result.run_dir


def images(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "train").rglob("*_0.jpg"))  # one of each class


def test_cli_writes_one_png_per_image_into_the_run(run, capsys):
    root, run_dir = run
    assert main(["explain", str(run_dir), *images(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["path", "explained", "p", "predicted", "p", "picture"] and len(out) == 4
    pngs = sorted((run_dir / "explain").iterdir())
    assert [p.name for p in pngs] == ["ant_0.gradcam.png", "bee_0.gradcam.png", "cow_0.gradcam.png"]
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 5_000 for p in pngs)
    assert not [p for p in (run_dir / "explain").iterdir() if p.name.startswith(".")]  # no temp files left


def test_heatmaps_differ_between_two_target_classes(run, tmp_path):
    root, run_dir = run
    by_class = {c: dogcat.explain(run_dir, images(root), output=tmp_path, target_class=c) for c in ("ant", "cow")}
    for a, b in zip(by_class["ant"], by_class["cow"]):
        assert a.heatmap.shape == (32, 32) and 0 <= float(a.heatmap.min()) and float(a.heatmap.max()) <= 1
        assert (a.target, b.target) == ("ant", "cow") and a.predicted == b.predicted
        assert not torch.allclose(a.heatmap, b.heatmap), a.path
        assert a.output.name.endswith(".gradcam-ant.png") and b.output.name.endswith(".gradcam-cow.png")
        assert a.output.read_bytes() != b.output.read_bytes()
    by_index = dogcat.explain(run_dir, images(root)[:1], output=tmp_path / "i", target_class=2)  # an index
    assert by_index[0].target == "cow" and torch.allclose(by_index[0].heatmap, by_class["cow"][0].heatmap, atol=1e-4)


def test_gradcam_takes_no_parameter_gradient_and_any_layer(run):
    root, run_dir = run
    clf = dogcat.load(run_dir)
    x = torch.randn(2, 3, 32, 32)
    default = gradcam(clf.model, x, [0, 1])
    assert torch.equal(default, gradcam(clf.model, x, [0, 1], "features.6"))  # the rule's choice
    assert all(p.grad is None for p in clf.model.parameters()) and not clf.model.training
    early = gradcam(clf.model, x, [0, 1], "features.1")  # an earlier block: a finer map
    assert early.shape == default.shape and not torch.allclose(early, default)
    assert torch.equal(explainer(clf.model)(x, [0, 1]), default)


@pytest.mark.parametrize("name, layer", [("smallcnn", "features.6"), ("resnet18", "layer4"),
                                         ("resnet34", "layer4"), ("squeezenet", "features"),
                                         ("timm:resnet10t", "layer4")])
def test_layer_rule_picks_the_last_conv_block(name, layer):
    assert pick_layer(build_model(name, 3, 3), (3, 64, 64)) == layer


def test_layer_rule_and_names_refused_with_a_reason():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(GradCamError, match="no convolutional layer"):
        pick_layer(mlp, (3, 8, 8))
    model = build_model("smallcnn", 2, 3)
    with pytest.raises(GradCamError, match="did you mean features.6"):
        gradcam(model, torch.zeros(1, 3, 32, 32), [0], "features.66")
    with pytest.raises(GradCamError, match="2-D tensor"):
        gradcam(model, torch.zeros(1, 3, 32, 32), [0], "classifier.1")


def test_exports_safetensors_explained_onnx_and_torchscript_refused(run, capsys):
    root, run_dir = run
    one = images(root)[0]
    assert main(["export", str(run_dir), "--format=safetensors"]) == 0
    weights = run_dir / "export" / "model.safetensors"
    capsys.readouterr()
    assert main(["explain", str(weights), one]) == 0
    assert (weights.parent / "explain" / "ant_0.gradcam.png").read_bytes()[:8] == PNG
    assert main(["export", str(run_dir), "--format=torchscript", "--output", str(run_dir / "ts" / "m.pt")]) == 0
    fake_onnx = run_dir / "m.onnx"
    fake_onnx.write_bytes(b"not read")
    for path, kind in ((run_dir / "ts" / "m.pt", "TorchScript"), (fake_onnx, "ONNX")):
        capsys.readouterr()
        assert main(["explain", str(path), one]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, err
        assert f"{kind} export is a compiled graph" in err and "safetensors" in err
    assert not (run_dir / "ts" / "explain").exists()


def test_bad_target_layer_and_unreadable_images(run, tmp_path, capsys):
    root, run_dir = run
    for extra, words in ((["--target=bird"], ["--target='bird'", "ant, bee, cow"]),
                         (["--layer=features.66"], ["features.66", "did you mean"])):
        capsys.readouterr()
        assert main(["explain", str(run_dir), images(root)[0], "--output", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and all(w in err for w in words), err
        assert [ln for ln in err.splitlines() if "error:" in ln] and not (tmp_path / "x").exists()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    done = dogcat.explain(run_dir, [str(broken), images(root)[1]], output=tmp_path / "y")
    assert done[0].error and done[0].output is None and done[1].output.is_file()
    assert sorted(p.name for p in (tmp_path / "y").iterdir()) == ["bee_0.gradcam.png"]


def _report(run_dir: Path, out: Path, explain):
    """A report whose "most confidently wrong" section has three mistakes (labels shifted by one class)."""
    from dogcat.tracking.collect import Collector
    from dogcat.tracking.report import write_report

    clf = dogcat.load(run_dir)
    x = torch.stack([clf._prepare(({"path": p}, p))[1] for p in images(run_dir.parent.parent)])
    logits = clf.forward(x)
    wrong = (logits.argmax(1) + 1) % 3
    collect = Collector(3)
    collect.add(["a", "b", "c"], x, wrong, logits)
    metrics = {"loss": 1.0, "accuracy": 0.0, "logloss": 1.0, "count": 3, "confusion": [[0, 1, 0], [0, 0, 1], [1, 0, 0]]}
    return write_report(out, run_dir, metrics, collect, clf.class_names, clf.pre.mean, clf.pre.std,
                        explain=explain(clf) if explain else None)


def test_report_shows_the_mistakes_gradcam_or_says_why_not(run, tmp_path, caplog):
    root, run_dir = run
    page = _report(run_dir, tmp_path / "a", lambda clf: explainer(clf.model)).read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert {"mistakes.png", "mistakes_gradcam.png"} <= set(srcs)
    assert (tmp_path / "a" / "report" / "mistakes_gradcam.png").read_bytes()[:8] == PNG

    def impossible(clf):
        def explain(images, classes):
            raise GradCamError("SmallCNN has no convolutional layer for Grad-CAM to look at")
        return explain

    with caplog.at_level(logging.WARNING, logger="dogcat"):
        page = _report(run_dir, tmp_path / "b", impossible).read_text()
    assert "mistakes.png" in page and "mistakes_gradcam.png" not in page
    assert "no Grad-CAM heatmaps: SmallCNN has no convolutional layer" in page
    assert any("no Grad-CAM heatmaps" in r.getMessage() for r in caplog.records)
    assert "mistakes_gradcam" not in _report(run_dir, tmp_path / "c", None).read_text()  # no explain: as before


def test_without_captum_one_line_says_how_to_install(run, monkeypatch, capsys, tmp_path):
    import sys

    root, run_dir = run
    monkeypatch.setitem(sys.modules, "captum", None)  # import captum raises ImportError
    assert main(["explain", str(run_dir), images(root)[0], "--output", str(tmp_path / "z")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "pip install 'dogcat-vision[explain]'" in err, err
    assert not (tmp_path / "z").exists()
