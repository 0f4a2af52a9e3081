"""Issue 9, shipping the model: export (ONNX / TorchScript / safetensors + sidecar), ``dogcat.load(...).predict``,
TTA, submission checks, --clip-probs, and the errors people hit. The session's tiny run (conftest.tiny_run), copied once for the module."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dogcat
from dogcat import test
from dogcat.cli import main
from dogcat.data import DataError
from dogcat.engine.trained import load_model
from dogcat.engine.submission import SubmissionError
from dogcat.export import ExportError, export, sidecar_path
from dogcat.models.weights import WeightsError


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, tiny_run):
    """The session's tiny run (1-epoch smallcnn at 32 px, Kaggle layout, test ids 1-4), copied for this module
    (exports go to RUN/export/); returns (data root, {"test_ids": [...]}, run folder)."""
    run = tiny_run.copy(tmp_path_factory.mktemp("ship"))
    return tiny_run.data, {"test_ids": ["1", "2", "3", "4"]}, run


@pytest.fixture(scope="module")
def exports(shipped):
    """Each format exported once to its default place, RUN/export/model.*."""
    run = shipped[2]
    return {fmt: export(str(run), fmt) for fmt in ("onnx", "torchscript", "safetensors")}


def _images(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "test").glob("*.jpg"))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_matches_pytorch_and_batches_dynamically(shipped, exports, fmt):
    _, _, run = shipped
    res = exports[fmt]
    assert res.path == run / "export" / ("model" + {"onnx": ".onnx", "torchscript": ".pt"}.get(fmt, ".safetensors"))
    assert res.max_abs_diff <= 1e-4  # the export's own check passed
    meta = json.loads(sidecar_path(res.path).read_text())
    assert meta["model"] == "smallcnn" and meta["class_names"] == ["cat", "dog"] and meta["in_chans"] == 3
    assert meta["image_size"] == 32 and meta["preprocess"]["resize"] == 37 and meta["preprocess"]["center_crop"] == 32
    assert meta["dogcat_version"] == dogcat.__version__ and meta["source_checkpoint"].endswith("best.pt")
    assert len(meta["mean"]) == len(meta["std"]) == 3
    model = load_model(str(run)).model.cpu().eval()
    if fmt == "onnx":  # compared here with the runtimes themselves, not through dogcat's runner
        import onnxruntime as ort

        sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
        run_it = lambda x: torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])  # noqa: E731
    elif fmt == "torchscript":
        ts = torch.jit.load(str(res.path))
        run_it = lambda x: ts(x)  # noqa: E731
    else:
        from safetensors.torch import load_model as st_load

        from dogcat.models import build_model

        fresh = build_model("smallcnn", 2, 3).eval()
        st_load(fresh, str(res.path))
        run_it = lambda x: fresh(x)  # noqa: E731
    for b in (1, 5):  # the traced / exported batch was 2: both sizes prove the batch dimension is dynamic
        x = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            got, want = run_it(x), model(x)
        assert got.shape == (b, 2) and float((got - want).abs().max()) <= 1e-4


def test_export_cli_and_failed_check(shipped, tmp_path, capsys):
    _, _, run = shipped
    out = tmp_path / "m.pt"
    assert main(["export", str(run), "--format=torchscript", f"--output={out}"]) == 0
    assert out.is_file() and sidecar_path(out).is_file() and "sidecar" in capsys.readouterr().out
    with pytest.raises(ExportError, match="not safe to ship"):  # an impossible tolerance makes the check fail
        export(str(run), "torchscript", out, atol=-1.0)
    assert not sidecar_path(out).exists()  # a failed check leaves no sidecar vouching for the file
    assert main(["export", str(run), "--format=tflite"]) == 2
    assert "not one of: onnx, torchscript, safetensors" in capsys.readouterr().err


def test_missing_onnx_package_says_how_to_install(shipped, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(ExportError, match=r"pip install 'dogcat-vision\[export\]'"):
        export(str(shipped[2]), "onnx")


def test_load_run_predict_equals_cli(shipped, tmp_path):
    root, _, run = shipped
    paths = _images(root)
    rows = dogcat.load(run).predict(paths, batch_size=2)
    out = tmp_path / "p.json"
    assert main(["predict", str(run), *paths, f"--output={out}"]) == 0
    cli = json.loads(out.read_text())
    assert [r["path"] for r in cli] == [r["path"] for r in rows] == paths
    for a, b in zip(rows, cli):
        assert a["class"] == b["class"] and a["probs"] == pytest.approx(b["probs"], abs=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_exported_classifier_matches_pytorch(shipped, exports, fmt):
    root, _, run = shipped
    paths = _images(root)
    want = dogcat.load(run).predict(paths)
    clf = dogcat.load(exports[fmt].path, trust=fmt == "torchscript")  # TorchScript runs code: asked for here
    assert clf.backend == fmt and clf.class_names == ["cat", "dog"]
    got = clf.predict(str(root / "test"), batch_size=3)  # a folder: same files, same order
    assert [r["path"] for r in got] == paths
    for a, b in zip(got, want):
        assert max(abs(a["probs"][c] - b["probs"][c]) for c in ("cat", "dog")) <= 1e-4


def test_cli_predict_on_onnx(shipped, exports, tmp_path):
    root, _, _ = shipped
    out = tmp_path / "p.csv"
    assert main(["predict", str(exports["onnx"].path), str(root / "test" / "*.jpg"), f"--output={out}"]) == 0
    lines = list(csv.DictReader(out.open(newline="")))
    assert len(lines) == 4 and all(ln["class"] in ("cat", "dog") and not ln["error"] for ln in lines)


def test_images_tensors_and_tta(shipped, exports):
    root, _, run = shipped
    path = _images(root)[0]
    pil = Image.open(path)
    arr = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).contiguous()  # CHW uint8
    for clf in (dogcat.load(run), dogcat.load(exports["onnx"].path)):
        plain = clf.predict([path, pil, arr, pil.convert("L")])  # a grayscale PIL image is converted to RGB
        assert [r.get("index") for r in plain] == [None, 1, 2, 3] and plain[0]["path"] == path
        assert plain[1]["probs"] == pytest.approx(plain[0]["probs"], abs=1e-6)  # same pixels, same answer
        assert plain[2]["probs"] == pytest.approx(plain[0]["probs"], abs=1e-6)
        tta = clf.predict([path, pil, arr], tta=True)
        assert [set(r) for r in tta] == [set(r) for r in plain[:3]]  # same structure
        assert all(abs(sum(r["probs"].values()) - 1) < 1e-5 and r["probability"] == max(r["probs"].values())
                   for r in tta)
        # TTA = mean of the image's and its mirror's probabilities. 37 x 42 px: the eval resize (short side 37)
        # keeps it and the 32 px centre crop has equal left/right margins, so mirroring before or after it agree
        wide = torch.from_numpy(np.array(pil.convert("RGB").resize((42, 37)))).permute(2, 0, 1).contiguous()
        one, mirrored = clf.predict(wide)[0]["probs"], clf.predict(wide.flip(-1))[0]["probs"]
        both = clf.predict(wide, tta=True)[0]["probs"]
        assert both["dog"] == pytest.approx((one["dog"] + mirrored["dog"]) / 2, abs=1e-5)
    res = dogcat.evaluate(str(run), {"tta": True})  # val goes through the same flip averaging as predict
    val = list(csv.DictReader((run / "splits" / "val.csv").open(newline="")))
    by_predict = dogcat.load(run).predict([r["path"] for r in val], tta=True)
    right = [p["class"] == r["label"] for p, r in zip(by_predict, val)]
    logloss = -sum(math.log(max(p["probs"][r["label"]], 1e-15)) for p, r in zip(by_predict, val)) / len(val)
    assert res["count"] == len(val) and res["accuracy"] == pytest.approx(sum(right) / len(val), abs=1e-9)
    assert res["logloss"] == pytest.approx(logloss, rel=1e-4)


def test_submission_checks_and_clip(shipped, tmp_path, capsys):
    root, info, run = shipped
    out = tmp_path / "sub.csv"
    res = test(str(run), {"result_file": str(out), "clip_probs": [0.4, 0.6]})
    rows = list(csv.reader(out.open(newline="")))
    assert res["rows"] == 4 and [r[0] for r in rows[1:]] == info["test_ids"]
    assert all(0.4 <= float(r[1]) <= 0.6 for r in rows[1:])
    assert main(["test", str(run), f"--result-file={out}", "--clip-probs=0.02,0.98", "--tta"]) == 0
    assert main(["test", str(run), "--clip-probs=0.9,0.1"]) == 2
    assert "--clip-probs" in capsys.readouterr().err
    sample = tmp_path / "sample_submission.csv"  # the competition expects ids 1..6: ours lack 5 and 6
    sample.write_text("id,label\n" + "".join(f"{i},0.5\n" for i in range(1, 7)))
    with pytest.raises(SubmissionError, match=r"missing from the CSV: 5, 6 \(2\)"):
        test(str(run), {"result_file": str(out), "sample_submission": str(sample)})
    assert main(["test", str(run), f"--result-file={out}", f"--sample-submission={sample}"]) == 2
    assert "5, 6" in capsys.readouterr().err
    sample.write_text("id,label\n" + "".join(f"{i},0.5\n" for i in (4, 3, 2, 1)))  # any order: it is followed
    test(str(run), {"result_file": str(out), "sample_submission": str(sample)})
    assert [r[0] for r in csv.reader(out.open(newline=""))][1:] == ["4", "3", "2", "1"]
    from dogcat.engine.submission import check_submission  # against the test set's ids: 1 is one too many

    with pytest.raises(SubmissionError, match=r"the test set lacks: 1 \(1\)"):
        check_submission(out, ["2", "3", "4"])


def test_clear_errors(shipped, exports, tmp_path, capsys):
    root, _, run = shipped
    img = _images(root)[0]
    # 1. a bare state_dict of another architecture: both named, --model suggested
    bare = tmp_path / "weights.pth"
    torch.save(load_model(str(run)).model.state_dict(), bare)
    with pytest.raises(WeightsError, match=r"holds smallcnn weights, not resnet18 ones: pass --model=smallcnn"):
        load_model(str(bare), {"model": "resnet18"})
    assert dogcat.load(bare, model="smallcnn").predict(img)[0]["class"] in ("cat", "dog")
    # 2. a tensor with the wrong channel count for a 3-channel export
    clf = dogcat.load(exports["onnx"].path)
    with pytest.raises(DataError, match=r"takes 3-channel \(RGB\).*expand"):
        clf.predict(torch.zeros(1, 40, 40, dtype=torch.uint8))
    # 3. an exported file without its sidecar
    for fmt in ("onnx", "torchscript"):
        lone = tmp_path / exports[fmt].path.name
        shutil.copy(exports[fmt].path, lone)
        with pytest.raises(ExportError, match="no sidecar"):
            dogcat.load(lone)
        assert main(["predict", str(lone), img]) == 2
        assert "sidecar" in capsys.readouterr().err
