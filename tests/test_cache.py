"""Fast data: the fast JPEG decoder, the packed cache (rebuilds, interrupted builds, eval equality, bad files,
training from it, ``dogcat prepare``) and in-memory batches with their per-batch augmentation."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dogcat.data as D
import dogcat.data.cache as C
import dogcat.data.jpeg as J
from dogcat import load_config, train
from dogcat.cli import main
from dogcat.config import DataConfig
from dogcat.data.transforms import BatchPadCropFlip, EvalBatch
from datagen import make_kaggle, pattern

STD = torch.tensor(D.IMAGENET_STD).view(3, 1, 1)


def kcfg(root: Path, **kw) -> DataConfig:
    return DataConfig(train_data_root=str(root / "train"), test_data_root=str(root / "test"), image_size=32,
                      val_split=0.25, **kw)


def caches(root: Path) -> list[Path]:
    folder = root / ".dogcat-cache"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture
def kaggle(tmp_path: Path) -> dict:
    """Kaggle layout with bad files; sizes up to 160 px so that 32 px inputs (S = 37) take the DCT downscale."""
    return make_kaggle(tmp_path / "k", n_per_class=10, n_test=4, sizes=(40, 160))


def items(ds) -> dict[str, D.Item]:
    return {it.id: it for it in (ds[i] for i in range(len(ds)))}


# --- decoding -------------------------------------------------------------------------------------

def test_fast_decoder_matches_pil_and_handles_every_odd_file(kaggle, monkeypatch):
    for path in kaggle["good"] + kaggle["bad"]:
        fast = D.decode_image(path)
        monkeypatch.setattr(J, "simplejpeg", None)  # PIL only
        slow = D.decode_image(path)
        monkeypatch.undo()
        assert fast[1] == slow[1]  # the same reason for a bad file
        if fast[0] is not None:
            assert torch.equal(fast[0], slow[0])  # both are libjpeg-turbo: the same pixels


def test_draft_decode_keeps_eval_within_resampling_noise(tmp_path):
    rng = np.random.default_rng(5)
    tf = D.eval_transform(32)
    for i, (h, w) in enumerate([(160, 121), (301, 255), (97, 200)]):  # odd sizes: partial DCT blocks
        Image.fromarray(pattern(i, h, w, rng)).save(tmp_path / f"{i}.jpg", quality=90)
        full, _ = D.decode_image(tmp_path / f"{i}.jpg")
        small, _ = D.decode_image(tmp_path / f"{i}.jpg", min_short=37)
        assert min(small.shape[-2:]) == 37 and min(full.shape[-2:]) >= 74  # it did decode smaller
        diff = ((tf(full) - tf(small)) * STD).abs() * 255
        assert diff.mean() < 2.0, diff.mean()  # bicubic vs bilinear differ by ~1.5 on these noisy pictures


# --- the packed cache -----------------------------------------------------------------------------

def test_cached_eval_equals_files_and_bad_files_as_in_training(kaggle):
    plain = D.build_train_val(kcfg(kaggle["root"]))
    cached = D.build_train_val(kcfg(kaggle["root"], cache=True))
    [folder] = caches(kaggle["train"])
    assert (folder / "COMPLETE").is_file() and (folder / "pixels.u8").stat().st_size == 37 * 37 * 3 * 24
    assert isinstance(cached.val, D.ArrayImages) and cached.batch_transform is not None
    a, b = items(plain.val), items(cached.val)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].image is None:  # a bad file: skipped with the same reason
            assert b[k].image is None and b[k].error == a[k].error
            continue
        diff = ((a[k].image - b[k].image) * STD).abs().max() * 255
        assert diff <= 2.0 and a[k].label == b[k].label
    # every bad file comes out of a cached loader as from the files: same paths, same reasons
    reasons = {str(p): D.decode_image(p)[1] for p in kaggle["bad"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.BadImageWarning)
        for bundle in (plain, cached):
            found = {}
            for ds in (bundle.train, bundle.val):
                for batch in D.make_loader(ds, batch_size=5, num_workers=0, shuffle=False, seed=0):
                    found.update(batch.bad)
            assert found == reasons
    assert sorted(json.loads((folder / "index.json").read_text())["bad"].values()) == sorted(reasons.values())
    assert len((folder / "bad_files.txt").read_text().splitlines()) == 3
    # the test folder gets its own cache, which also equals the files
    pre = D.Preprocess(("cat", "dog"), 3, D.IMAGENET_MEAN, D.IMAGENET_STD, kcfg(kaggle["root"]).image_size, "crop")
    t_plain = D.build_test(kcfg(kaggle["root"]), "kaggle", pre)
    t_cached = D.build_test(kcfg(kaggle["root"], cache=True), "kaggle", pre)
    assert len(caches(kaggle["test"])) == 1
    for (ka, x), (kb, y) in zip(items(t_plain).items(), items(t_cached).items()):
        assert ka == kb and ((x.image - y.image) * STD).abs().max() * 255 <= 2.0


def test_cache_rebuilt_when_a_file_changes(kaggle):
    cfg = kcfg(kaggle["root"], cache=True)
    D.build_train_val(cfg)
    [first] = caches(kaggle["train"])
    D.build_train_val(cfg)
    assert caches(kaggle["train"]) == [first]  # unchanged files: reused
    changed = kaggle["train"] / "cat.0.jpg"
    Image.fromarray(np.full((50, 60, 3), 7, np.uint8)).save(changed)
    b = D.build_train_val(cfg)
    [second] = caches(kaggle["train"])
    assert second != first  # a new fingerprint; the stale cache is gone
    item = next(b.train[i] for i in range(len(b.train)) if b.train.samples[i][0] == str(changed))
    assert item.image.unique().tolist() == [7]  # the new pixels
    os.remove(kaggle["train"] / "dog.0.jpg")  # a removed file changes it too
    D.build_train_val(cfg)
    assert caches(kaggle["train"])[0] not in (first, second)


def test_interrupted_build_is_never_used(kaggle, monkeypatch):
    cfg = kcfg(kaggle["root"], cache=True)
    calls = []
    real = C._decode

    def dying(job):
        calls.append(job)
        if len(calls) == 10:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the build
        return real(job)

    monkeypatch.setattr(C, "_decode", dying)
    with pytest.raises(KeyboardInterrupt):
        D.build_train_val(cfg)
    assert caches(kaggle["train"]) == [] and not list((kaggle["train"] / ".dogcat-cache").iterdir())
    monkeypatch.setattr(C, "_decode", real)
    # a build killed outright leaves its temp folder; a copied cache may lack its marker: neither is used
    built = D.build_train_val(cfg)
    [folder] = caches(kaggle["train"])
    dead = folder.parent / f".tmp-999999999-{folder.name}"
    os.rename(folder, dead)
    (dead / "COMPLETE").unlink()
    os.mkdir(folder)
    (folder / "pixels.u8").write_bytes(b"\0" * 100)
    rebuilt = D.build_train_val(cfg)
    assert (folder / "COMPLETE").is_file() and not dead.exists()
    assert torch.equal(rebuilt.val[0].image, built.val[0].image)


def test_prepare_cli_builds_what_training_uses(kaggle, capsys):
    assert main(["prepare", str(kaggle["train"]), "--image-size=32"]) == 0
    out = capsys.readouterr().out
    [folder] = caches(kaggle["train"])
    assert str(folder) in out and "3 unreadable" in out and "37x37" in out
    stamp = (folder / "COMPLETE").stat().st_mtime_ns
    D.build_train_val(kcfg(kaggle["root"], cache=True))
    assert caches(kaggle["train"]) == [folder] and (folder / "COMPLETE").stat().st_mtime_ns == stamp
    assert main(["prepare", str(kaggle["root"] / "nothere")]) == 2


def test_read_only_root_falls_back_to_home_cache(kaggle, tmp_path, monkeypatch):
    monkeypatch.setattr(C, "FALLBACK_ROOT", tmp_path / "home-cache")
    monkeypatch.setattr(C, "_writable", lambda folder: folder == tmp_path / "home-cache")
    D.build_train_val(kcfg(kaggle["root"], cache=True))
    assert caches(kaggle["train"]) == [] and len(list((tmp_path / "home-cache").iterdir())) == 1


def test_in_memory_when_it_fits(kaggle):
    big = D.build_train_val(kcfg(kaggle["root"], cache=True, in_memory_mb=0))
    small = D.build_train_val(kcfg(kaggle["root"], cache=True))
    assert not big.train.in_memory and small.train.in_memory
    loader = D.make_loader(D.SeededItems(small.train), batch_size=4, num_workers=2, shuffle=False, seed=0)
    assert loader.num_workers == 0  # a gather needs no worker processes
    a, b = items(big.val), items(small.val)
    assert all((a[k].image is None and b[k].image is None) or torch.equal(a[k].image, b[k].image) for k in a)


def test_train_batches_are_a_function_of_seed_and_position(kaggle):
    b = D.build_train_val(kcfg(kaggle["root"], cache=True))
    keys = [(i, 1000 + i) for i in range(6)]
    x, y = b.train.__getitems__(keys), b.train.__getitems__(keys)
    assert x.images.dtype == torch.uint8 and x.images.shape[1:] == (3, 32, 32) and x.seed == 1000
    assert torch.equal(x.images, y.images)
    z = b.train.__getitems__([(i, 7 + i) for i in range(6)])
    assert not torch.equal(x.images, z.images)
    out = b.batch_transform(x.images, x.seed)
    assert out.dtype == torch.float32 and -3 < out.mean() < 3
    # augment="none": the eval crop exactly
    none = D.build_train_val(kcfg(kaggle["root"], cache=True, augment="none"))
    crops = none.batch_transform(none.train.__getitems__(keys).images, 0)
    evals = D.ArrayImages(none.train.pixels, none.train.rows, none.train.samples, none.train.ids,
                          EvalBatch(32, D.IMAGENET_MEAN, D.IMAGENET_STD)).__getitems__(keys).images
    assert torch.allclose(crops, evals, atol=1e-6)


def test_cached_crops_without_opencv_are_the_same_crops(monkeypatch, caplog):
    """OpenCV is optional (the [fast] extra): without it the same boxes and flips are cut with torch's resize."""
    import logging

    import dogcat.data.transforms as T

    yy, xx = np.mgrid[0:64, 0:64]
    images = [np.stack([yy * 3 + k, xx * 3 + k, (yy + xx) + 10 * k], -1).clip(0, 255).astype(np.uint8)
              for k in range(8)]  # smooth pictures: resampling differences stay small
    fast, slow = (D.CropFlipBatch(48, "default", threads=2, opencv=o)(images, 5).float() for o in (True, False))
    assert fast.shape == slow.shape == (8, 3, 48, 48) and (fast - slow).abs().mean() < 2.0  # levels of 255
    flip_fast, flip_slow = (D.CropFlipBatch(48, "flip", opencv=o)(images, 5) for o in (True, False))
    assert torch.equal(flip_fast, flip_slow)  # a centre crop, flipped: no resampling at all
    monkeypatch.setattr(T, "cv2", None)  # an install without OpenCV
    T._note_no_opencv.cache_clear()
    with caplog.at_level(logging.INFO, logger="dogcat"):
        assert not D.CropFlipBatch(48).opencv and not D.CropFlipBatch(48).opencv
    assert [r.message for r in caplog.records if "OpenCV" in r.message] == [
        "OpenCV is not installed: cached training crops use torch's resize, several times slower "
        "(pip install 'dogcat-vision[fast]')"]


def test_training_from_cache_matches_training_from_files(tmp_path):
    info = make_kaggle(tmp_path / "k", n_per_class=16, n_test=2, sizes=(40, 120))
    common = {"train_data_root": str(info["train"]), "image_size": 32, "batch_size": 4, "num_workers": 0,
              "model": "smallcnn", "lr": 0.01, "max_epoch": 2, "val_split": 0.25, "progress": "none",
              "debug_file": None, "runs_root": str(tmp_path / "runs")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.BadImageWarning)
        plain = train(load_config({**common, "env": "plain"}))
        cached = train(load_config({**common, "env": "cached", "cache": True}))
    acc = [r.history[-1]["val_accuracy"] for r in (plain, cached)]
    assert min(acc) >= 0.75 and abs(acc[0] - acc[1]) <= 0.25, acc  # the classes are easy; 8 val images
    bad = [(r.run_dir / "bad_files.txt").read_text().splitlines() for r in (plain, cached)]
    assert sorted(bad[0]) == sorted(bad[1]) and len(bad[0]) == 3


# --- in-memory Fashion-MNIST ----------------------------------------------------------------------

def test_fmnist_batches_augment_on_the_device(fmnist_dir):
    cfg = DataConfig(dataset="fashion-mnist", fashion_mnist_root=str(fmnist_dir), image_size=28)
    b = D.build_train_val(cfg)
    assert b.train.in_memory and isinstance(b.batch_transform, BatchPadCropFlip)
    batch = b.train.__getitems__([(i, 42 + i) for i in range(8)])
    assert batch.images.dtype == torch.uint8 and batch.seed == 42
    one, two = b.batch_transform(batch.images, 42), b.batch_transform(batch.images, 42)
    assert torch.equal(one, two) and not torch.equal(one, b.batch_transform(batch.images, 43))
    val = b.val.__getitems__(list(range(8)))  # eval batches leave normalised, on the CPU
    assert one.shape == val.images.shape == (8, 1, 28, 28) and val.images.dtype == torch.float32
    # flip only: each image comes out as itself or its mirror, normalised; both occur
    flip = D.build_train_val(DataConfig(**{**cfg.__dict__, "augment": "flip"})).batch_transform
    x = batch.images.float().div(255).sub(D.FMNIST_MEAN[0]).div(D.FMNIST_STD[0])
    y = flip(batch.images, 42)
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(8)]
    mirrored = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(8)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
