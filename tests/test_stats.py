"""``dogcat stats`` on a folder of known pixels, and ``--normalize``: the statistics reach the transforms, the
checkpoint and the export sidecar; image-file statistics are cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dogcat import load_config, train
from dogcat.cli import main
from dogcat.data import build_train_val, dataset_stats, normalize


@pytest.fixture
def known(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Two classes of flat-coloured PNGs (one grayscale, 10 wide x 20 high) and an empty file; the expected
    pixels, as RGB in 0-1, of the readable ones."""
    root = tmp_path / "known"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (10, 10), (51, 102, 153)).save(root / "a" / "1.png")
    Image.new("L", (10, 20), 204).save(root / "a" / "2.png")
    Image.new("RGB", (10, 10), (0, 0, 0)).save(root / "b" / "3.png")
    Image.new("RGB", (10, 10), (255, 0, 51)).save(root / "b" / "4.png")
    (root / "b" / "bad.png").write_bytes(b"")
    pixels = np.concatenate([np.tile([51, 102, 153], (100, 1)), np.tile([204, 204, 204], (200, 1)),
                             np.tile([0, 0, 0], (100, 1)), np.tile([255, 0, 51], (100, 1))]) / 255
    return root, pixels


def test_stats_of_a_folder_with_a_known_mean(known):
    root, pixels = known
    s = dataset_stats(root)
    assert s.layout == "folder" and s.counts == {"a": 2, "b": 2}
    assert dict(s.sizes) == {(10, 10): 3, (10, 20): 1} and dict(s.modes) == {"RGB": 3, "L": 1}
    assert [Path(p).name for p, _ in s.bad] == ["bad.png"]
    assert s.mean == pytest.approx(tuple(pixels.mean(0)), abs=1e-5)
    assert s.std == pytest.approx(tuple(pixels.std(0)), abs=1e-5)


def test_stats_command(known, fmnist_dir, capsys):
    root, pixels = known
    assert main(["stats", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 4 and out["unreadable"][0]["path"].endswith("bad.png")
    assert out["mean"] == pytest.approx(list(pixels.mean(0)), abs=1e-5)
    assert main(["stats", str(fmnist_dir)]) == 0  # an array layout, detected
    text = capsys.readouterr().out
    assert "200 images, 10 classes (fashion-mnist layout)" in text and "28x28 200" in text
    assert main(["stats", str(root / "missing")]) == 2
    assert main(["stats", str(root), "--lr=1"]) == 2


def test_normalize_dataset_image_files_is_cached(known, monkeypatch):
    root, _ = known
    opts = {"train_data_root": str(root), "image_size": 16, "val_split": 0.0, "normalize": "dataset"}
    b = build_train_val(load_config(opts).data)
    assert len(list((root / ".dogcat-cache").glob("norm-*.json"))) == 1
    assert b.pre.mean != (0.485, 0.456, 0.406) and b.batch_transform.mean == b.pre.mean

    def fail(*a, **k):
        raise AssertionError("computed again instead of read from the cache")

    monkeypatch.setattr(normalize, "file_moments", fail)
    assert build_train_val(load_config(opts).data).pre.mean == b.pre.mean
    imagenet = build_train_val(load_config({**opts, "normalize": "imagenet"}).data).pre
    assert imagenet.mean == (0.485, 0.456, 0.406)


def test_normalize_dataset_reaches_checkpoint_and_sidecar(fmnist_dir, tmp_path):
    from dogcat.data.stats import array_moments
    from dogcat.engine.checkpoint import load_checkpoint
    from dogcat.export import export

    opts = {"fashion_mnist_root": str(fmnist_dir), "dataset": "fashion-mnist", "image_size": 28, "model": "fastcnn",
            "batch_size": 50, "val_split": 0.25, "max_epoch": 1, "progress": "none", "debug_file": None,
            "runs_root": str(tmp_path), "keep_top_k": 0, "normalize": "dataset", "env": "norm", "augment": "none"}
    b = build_train_val(load_config(opts).data)
    mean, std = array_moments(b.train)  # of the 150 training images only
    assert b.pre.mean == mean and b.pre.std == std and mean != (0.2860,)
    x = b.train.__getitems__([(0, 0)]).images
    assert torch.allclose(b.batch_transform(x, 0), (x.float() / 255 - mean[0]) / std[0], atol=1e-5)

    run = train(load_config(opts)).run_dir
    pre = load_checkpoint(run / "checkpoints" / "best.pt")["preprocess"]
    assert (pre["mean"], pre["std"]) == (list(mean), list(std))
    sidecar = json.loads(export(str(run), "safetensors").sidecar.read_text())
    assert (sidecar["mean"], sidecar["std"]) == (list(mean), list(std))
