"""The data-layout registry: names, detection order, errors; the new data API (``pre``, ``layout``) against the
old arguments; and a layout added in one file (npz_layout.py) that trains, validates and tests like the others."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dogcat
import dogcat.data as D
import npz_layout  # noqa: F401  # registers "npz": all it takes to add a layout
from dogcat.config import DataConfig, load_config
from dogcat.tracking.listing import load_run


def test_builtin_layouts_registered_in_detection_order():
    names = D.layout_names()
    assert names.index("list") < names.index("fashion-mnist") < names.index("kaggle") < names.index("folder")
    assert "npz" in names and "nope" not in names


def test_duplicate_or_reserved_name_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        D.register_layout("Kaggle")(type("Again", (D.Layout,), {}))
    with pytest.raises(ValueError, match="auto"):
        D.register_layout("auto")(type("Auto", (D.Layout,), {}))
    assert type(D.get_layout("kaggle")).__name__ == "KaggleLayout"


def test_unknown_name_is_one_data_error_listing_the_layouts(tmp_path):
    with pytest.raises(D.DataError) as e:
        D.build_train_val(DataConfig(dataset="kagle"))
    msg = str(e.value)
    assert "\n" not in msg and "--dataset='kagle'" in msg
    assert all(name in msg for name in ("auto", "kaggle", "folder", "fashion-mnist", "list", "npz"))
    assert D.detect(DataConfig(dataset="Folder")) == "folder"  # names are case-insensitive, as models'
    # the command line: exit 2, one line, no run folder
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "dogcat", "train", "--dataset=kagle", f"--runs-root={runs}"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "kagle" in r.stderr and "Traceback" not in r.stderr and not runs.exists()


def test_bundles_carry_preprocess_and_layout(kaggle_dir, fmnist_dir):
    cfg = DataConfig(train_data_root=str(kaggle_dir / "train"), test_data_root=str(kaggle_dir / "test"),
                     image_size=32)
    b = D.build_train_val(cfg)
    assert (b.layout, b.pre.classes, b.pre.resize, b.pre.size) == ("kaggle", ("cat", "dog"), "crop", 32)
    assert (b.pre.in_chans, b.pre.mean, b.pre.std) == (3, D.IMAGENET_MEAN, D.IMAGENET_STD)
    kaggle_test = D.build_test(cfg, b.layout, b.pre)
    bare = D.build_test(cfg, None, b.pre)  # None: a bare state_dict's (no layout known): test_data_root decides
    assert bare.ids == kaggle_test.ids and torch.equal(bare[0].image, kaggle_test[0].image)
    f = D.build_train_val(DataConfig(train_data_root=str(fmnist_dir), image_size=28))
    assert (f.layout, f.pre.in_chans, f.pre.mean, f.pre.resize) == ("fashion-mnist", 1, D.FMNIST_MEAN, "squash")
    assert D.eval_transform_for(f.pre)(torch.zeros(3, 50, 40, dtype=torch.uint8)).shape == (3, 28, 28)  # squashed
    assert len(D.build_test(DataConfig(fashion_mnist_root=str(fmnist_dir)), f.layout, f.pre)) == 50
    plain = D.Layout().fingerprint(f, DataConfig())  # what a layout gets without its own: the split rows
    assert plain["count"] == 200 and plain["sha256"] != D.get_layout(f.layout).fingerprint(f, DataConfig(
        train_data_root=str(fmnist_dir)))["sha256"]


def make_npz(path: Path, n_train: int = 96, n_test: int = 24, side: int = 16) -> Path:
    """Two easy classes: the bright half of the picture is the top or the bottom one (flips keep the class)."""
    g = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 2
        x = g.integers(0, 60, (n, side, side))
        for i, label in enumerate(y):
            x[i, label * side // 2:(label + 1) * side // 2, :] += 150
        return x.astype(np.uint8), y.astype(np.uint8)

    (xt, yt), (xs, ys) = split(n_train), split(n_test)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys, class_names=np.array(["top", "bottom"]))
    return path


def test_a_layout_in_one_file_trains_validates_and_tests(tmp_path):
    data = make_npz(tmp_path / "halves.npz")
    assert D.detect(DataConfig(train_data_root=str(data))) == "npz"  # found by --dataset=auto too
    result = dogcat.train(dataset="npz", train_data_root=str(data), image_size=16, model="smallcnn", max_epoch=3,
                          batch_size=16, lr=0.01, val_split=0.25, num_workers=0, progress="none", debug_file=None,
                          runs_root=str(tmp_path / "runs"))
    run = result.run_dir
    assert (run / "status").read_text().strip() == "finished"
    assert result.history[-1]["val_accuracy"] >= 0.9
    rows = list(csv.reader((run / "splits" / "val.csv").open(newline="")))
    assert rows[0] == ["path", "label"] and len(rows) == 1 + 24 and rows[1][0].startswith("npz/train/")  # as is
    manifest = json.loads((run / "manifest.json").read_text())["data"]
    assert manifest["layout"] == "npz" and manifest["method"] == "sha256 of the .npz file"
    assert load_run(run).data().startswith("npz:halves.npz (")  # `dogcat runs` names it after its source
    val = dogcat.evaluate(str(run))
    assert val["accuracy"] == pytest.approx(result.history[-1]["val_accuracy"]) and val["count"] == 24
    tested = dogcat.test(str(run), {"result_file": str(tmp_path / "submission.csv")})
    assert tested["rows"] == 24 and tested["metrics"]["accuracy"] >= 0.9  # a labelled test set: scored
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["layout"] == "npz" and dogcat.load_model(str(run)).layout == "npz"
    ckpt["data_kind"] = ckpt.pop("layout")  # the key's older name, in checkpoints written before it changed
    torch.save(ckpt, tmp_path / "old.pt")
    assert dogcat.load_model(str(tmp_path / "old.pt")).layout == "npz"
    cfg = load_config({"dataset": "npz", "train_data_root": str(data)})
    assert cfg.data.dataset == "npz"  # the config takes any name: the registry decides
