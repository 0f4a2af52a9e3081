"""Fast tests of dogcat.data on tiny generated data (datagen.py)."""

from __future__ import annotations

import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision.datasets

import dogcat.data as D
from dogcat.config import DataConfig
from dogcat.data import fashion_mnist
from datagen import make_fmnist_idx, make_folder, make_kaggle, pattern


def rgb(names, size: int = 32) -> D.Preprocess:
    """What a 3-channel model with ImageNet normalisation at ``size`` expects."""
    return D.Preprocess(tuple(names), 3, D.IMAGENET_MEAN, D.IMAGENET_STD, size, "crop")


def kcfg(root: Path, **kw) -> DataConfig:
    return DataConfig(train_data_root=str(root / "train"), test_data_root=str(root / "test"),
                      image_size=32, **kw)


def all_samples(bundle: D.DataBundle) -> list[tuple[str, int]]:
    return bundle.splits["train"] + bundle.splits.get("val", [])


# --- detection ------------------------------------------------------------------------------------

def test_detect_kind(kaggle_dir, folder_dir, fmnist_dir, tmp_path):
    assert D.detect(kcfg(kaggle_dir)) == "kaggle"
    assert D.detect(DataConfig(train_data_root=str(folder_dir))) == "folder"
    assert D.detect(DataConfig(train_data_root=str(fmnist_dir))) == "fashion-mnist"
    assert D.detect(DataConfig(train_list="x.csv")) == "list"
    assert D.detect(DataConfig(dataset="folder", train_data_root=str(kaggle_dir))) == "folder"


def test_detect_errors(tmp_path, kaggle_dir):
    with pytest.raises(D.DataError, match="Kaggle download folder"):  # data/ instead of data/train
        D.detect(DataConfig(train_data_root=str(kaggle_dir)))
    with pytest.raises(D.DataError, match="--config=fashion-mnist") as e:
        D.detect(DataConfig(train_data_root=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in str(e.value) and "kaggle" in str(e.value).lower()
    with pytest.raises(D.DataError, match="kaggle.com"):  # the same advice with an explicit kind
        D.build_train_val(DataConfig(dataset="kaggle", train_data_root=str(tmp_path / "nope")))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    with pytest.raises(D.DataError, match="Supported"):
        D.detect(DataConfig(train_data_root=str(tmp_path / "junk")))


# --- split ----------------------------------------------------------------------------------------

def test_split_deterministic_stratified_disjoint(kaggle_dir):
    a = D.build_train_val(kcfg(kaggle_dir, val_split=0.3, split_seed=0))
    b = D.build_train_val(kcfg(kaggle_dir, val_split=0.3, split_seed=0))
    c = D.build_train_val(kcfg(kaggle_dir, val_split=0.3, split_seed=1))
    assert a.layout == "kaggle" and list(a.pre.classes) == ["cat", "dog"] and a.pre.in_chans == 3
    assert a.splits == b.splits and a.splits["val"] != c.splits["val"]
    train, val = set(a.splits["train"]), set(a.splits["val"])
    assert not train & val
    files = sorted(str(p) for p in (kaggle_dir / "train").iterdir())
    assert sorted(p for p, _ in train | val) == files
    per_class = Counter(y for _, y in a.splits["train"] + a.splits["val"])
    val_counts = Counter(y for _, y in a.splits["val"])
    assert all(val_counts[y] == round(n * 0.3) for y, n in per_class.items())
    assert len(a.train) == len(train) and len(a.val) == len(val)


def test_stratified_split_ignores_listing_order():
    keys = [f"f{i:02d}" for i in range(20)]
    labels = [i % 2 for i in range(20)]
    tr, va = D.stratified_split(labels, 0.25, seed=3, keys=keys)
    order = list(reversed(range(20)))
    tr2, va2 = D.stratified_split([labels[i] for i in order], 0.25, seed=3, keys=[keys[i] for i in order])
    assert {keys[i] for i in va} == {keys[order[i]] for i in va2}
    assert len(va) == 2 * round(10 * 0.25) and sorted(tr + va) == list(range(20))
    with pytest.raises(D.DataError):
        D.stratified_split(labels, 1.0, seed=0)


def test_val_split_zero(kaggle_dir):
    b = D.build_train_val(kcfg(kaggle_dir, val_split=0.0))
    assert b.val is None and "val" not in b.splits and len(b.train) == len(os.listdir(kaggle_dir / "train"))


# --- odd and bad images ---------------------------------------------------------------------------

def test_odd_but_good_images_load(tmp_path):
    info = make_kaggle(tmp_path)
    for tf in (D.train_transform(32), D.eval_transform(32)):
        ds = D.ImageFiles([(str(p), 0) for p in info["odd"]], [p.stem for p in info["odd"]], tf)
        for item in ds:
            assert item.error is None and item.image.shape == (3, 32, 32) and item.image.dtype == torch.float32


def test_bad_images_give_errors_and_collate_drops_them(tmp_path):
    info = make_kaggle(tmp_path)
    paths = info["bad"] + info["good"][:2]
    ds = D.ImageFiles([(str(p), 1) for p in paths], [p.stem for p in paths], D.eval_transform(32))
    items = [ds[i] for i in range(len(ds))]
    errors = [it.error for it in items[:3]]
    assert errors[0] == "empty file" and errors[1] == "truncated image" and errors[2].startswith("not an image")
    assert all(it.image is None for it in items[:3])
    batch = D.collate_items(items)
    assert batch.images.shape == (2, 3, 32, 32) and batch.labels.tolist() == [1, 1]
    assert batch.ids == [p.stem for p in info["good"][:2]]
    assert [p for p, _ in batch.bad] == [str(p) for p in info["bad"]]
    empty = D.collate_items(items[:3])
    assert empty.images.shape[0] == 0 and empty.labels.shape == (0,) and len(empty.bad) == 3


def test_missing_file_is_bad_not_fatal(tmp_path):
    item = D.ImageFiles([(str(tmp_path / "gone.jpg"), 0)], ["gone"], D.eval_transform(32))[0]
    assert item.image is None and item.error == "missing file"


def test_bad_files_warns_once_and_writes(tmp_path):
    out = tmp_path / "run" / "bad_files.txt"
    bf = D.BadFiles(out)
    with pytest.warns(D.BadImageWarning) as rec:
        bf.add([("a.jpg", "empty file"), ("b.jpg", "truncated image")])
        bf.add([("a.jpg", "empty file")])
    assert len(rec) == 2 and "a.jpg" in str(rec[0].message) and "empty file" in str(rec[0].message)
    assert bf.count == 2
    assert out.read_text().splitlines() == ["a.jpg\tempty file", "b.jpg\ttruncated image"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a resumed run knows these already: no warning, no new lines
        again = D.BadFiles(out)
        again.add([("a.jpg", "empty file")])
    assert again.count == 2 and len(out.read_text().splitlines()) == 2
    none = D.BadFiles(None)
    with pytest.warns(D.BadImageWarning):
        none.add([("c.jpg", "x")])
    assert none.count == 1


# --- Kaggle test, folder layout -------------------------------------------------------------------

def test_kaggle_test_ids_numeric_sorted(tmp_path):
    make_kaggle(tmp_path, n_per_class=3, n_test=11, bad=False)
    cfg = kcfg(tmp_path)
    b = D.build_train_val(cfg)
    ds = D.build_test(cfg, b.layout, b.pre)
    items = [ds[i] for i in range(len(ds))]
    assert [it.id for it in items] == [str(i) for i in range(1, 12)]
    assert all(it.label == -1 and it.image.shape == (3, 32, 32) for it in items)


def test_folder_layout(folder_dir, tmp_path):
    cfg = DataConfig(train_data_root=str(folder_dir), image_size=32, val_split=0.25)
    b = D.build_train_val(cfg)
    assert b.layout == "folder" and list(b.pre.classes) == ["ant", "bee", "cow"]
    assert len(b.train) == 18 and len(b.val) == 6
    assert Counter(y for _, y in b.splits["val"]) == {0: 2, 1: 2, 2: 2}
    assert b.val[0].id.split("/")[0] in list(b.pre.classes) and b.val[0].image.shape == (3, 32, 32)
    # a separate val folder: a missing class is fine, labels map through the training names
    val_root = make_folder(tmp_path / "val", classes=("ant", "cow"), n_per_class=2)
    b2 = D.build_train_val(DataConfig(train_data_root=str(folder_dir), val_data_root=str(val_root),
                                      image_size=32))
    assert len(b2.train) == 24 and sorted(y for _, y in b2.splits["val"]) == [0, 0, 2, 2]
    bad_val = make_folder(tmp_path / "val2", classes=("ant", "yak"), n_per_class=1)
    with pytest.raises(D.DataError, match="yak"):
        D.build_train_val(DataConfig(train_data_root=str(folder_dir), val_data_root=str(bad_val)))


def test_folder_test_sets(folder_dir, tmp_path):
    names = ["ant", "bee", "cow"]
    labelled = make_folder(tmp_path / "t1", classes=("cow", "bee"), n_per_class=2)
    ds = D.build_test(DataConfig(test_data_root=str(labelled), image_size=32), "folder", rgb(names))
    assert sorted(ds[i].label for i in range(len(ds))) == [1, 1, 2, 2]
    flat = tmp_path / "t2"
    (flat / "sub").mkdir(parents=True)
    shutil.copy(folder_dir / "ant" / "ant_0.jpg", flat / "x.JPG")
    shutil.copy(folder_dir / "bee" / "bee_0.jpg", flat / "sub" / "y.png")
    ds = D.build_test(DataConfig(test_data_root=str(flat), image_size=32), "folder", rgb(names))
    assert [(ds[i].id, ds[i].label) for i in range(len(ds))] == [("sub/y", -1), ("x", -1)]


# --- Fashion-MNIST --------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_fmnist(tmp_path, gz):
    root = make_fmnist_idx(tmp_path / "f", gz=gz)
    cfg = DataConfig(dataset="fashion-mnist", fashion_mnist_root=str(root), image_size=28, val_split=0.2)
    b = D.build_train_val(cfg)
    assert (b.pre.in_chans, b.pre.mean, b.pre.std, b.layout) == (1, (0.2860,), (0.3530,), "fashion-mnist")
    assert list(b.pre.classes)[0] == "T-shirt/top" and list(b.pre.classes)[9] == "Ankle boot"
    assert len(b.train) == 160 and len(b.val) == 40 and Counter(y for _, y in b.splits["val"]) == {k: 4 for k in range(10)}
    item = b.val[0]
    assert item.image.shape == (1, 28, 28) and item.path == f"fashion-mnist/train/{item.id}"
    assert b.train[0].image.shape == (1, 28, 28)
    test = D.build_test(cfg, b.layout, b.pre)
    assert len(test) == 50 and all(0 <= test[i].label < 10 for i in range(50))
    big = D.build_train_val(DataConfig(dataset="fashion-mnist", fashion_mnist_root=str(root), image_size=32))
    assert big.train[0].image.shape == (1, 32, 32) and big.val[0].image.shape == (1, 32, 32)


def test_fmnist_from_train_data_root(fmnist_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "no-debian")
    b = D.build_train_val(DataConfig(train_data_root=str(fmnist_dir), val_split=0.0))
    assert b.layout == "fashion-mnist" and len(b.train) == 200 and b.val is None


def test_fmnist_fallbacks(fmnist_dir, monkeypatch, tmp_path):
    cfg = DataConfig(dataset="fashion-mnist", train_data_root=None)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", fmnist_dir)
    monkeypatch.setattr(fashion_mnist, "CACHE_ROOT", tmp_path / "cache")
    assert fashion_mnist.resolve_root(None) == fmnist_dir
    # no Debian files: torchvision's download (faked: no network here) fills the cache
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "no-debian")
    calls = []

    def fake_download(root, train, download):
        calls.append(train)
        make_fmnist_idx(Path(root) / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    assert len(D.build_train_val(cfg).train) == 140 and calls
    # everything fails: a DataError that says how to get the files
    monkeypatch.setattr(fashion_mnist, "CACHE_ROOT", tmp_path / "cache2")

    def no_network(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    with pytest.raises(D.DataError, match="apt-get install dataset-fashion-mnist") as e:
        D.build_train_val(cfg)
    assert "--fashion-mnist-root" in str(e.value)
    with pytest.raises(D.DataError, match="--fashion-mnist-root"):
        fashion_mnist.resolve_root(str(tmp_path / "empty"))


# --- list files -----------------------------------------------------------------------------------

def test_list_csv_and_whitespace(kaggle_dir, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    cats = sorted((kaggle_dir / "train").glob("cat.[0-5].jpg"))
    dogs = sorted((kaggle_dir / "train").glob("dog.[0-5].jpg"))
    rel = lambda p: os.path.relpath(p, lists)  # noqa: E731
    (lists / "train.csv").write_text("path,label\n" + "".join(f"{rel(p)},cat\n" for p in cats)
                                     + "".join(f"{p},dog\n" for p in dogs))  # relative and absolute
    (lists / "val.txt").write_text("# val list\n\n" + f"{rel(cats[0])} 0\n{rel(dogs[0])}   1\n")
    (lists / "test.csv").write_text("path\n" + "".join(f"{rel(p)}\n" for p in cats[:2]))
    cfg = DataConfig(train_list=str(lists / "train.csv"), val_list=str(lists / "val.txt"),
                     test_list=str(lists / "test.csv"), image_size=32)
    b = D.build_train_val(cfg)
    assert b.layout == "list" and list(b.pre.classes) == ["cat", "dog"] and len(b.train) == 12
    assert [y for _, y in b.splits["val"]] == [0, 1] and b.val[1].image.shape == (3, 32, 32)
    assert b.train[0].id == str(cats[0].with_suffix(""))  # outside the list's folder: the full path
    test = D.build_test(cfg, "list", b.pre)
    assert [test[i].label for i in range(2)] == [-1, -1]
    shutil.copy(cats[0], lists / "my cat.jpg")  # whitespace list: header line, a path with a space
    (lists / "test.txt").write_text(f"path label\nmy cat.jpg\n{rel(dogs[1])} dog\n")
    test = D.build_test(DataConfig(test_list=str(lists / "test.txt"), image_size=32), "list", b.pre)
    assert [(test[i].id, test[i].label) for i in range(2)] == [("my cat", -1), (str(dogs[1].with_suffix("")), 1)]
    # integer labels, no val list: class names are the numbers, split with val_split
    (lists / "ints.txt").write_text("".join(f"{p} {i % 2 * 5}\n" for i, p in enumerate(cats + dogs)))
    b2 = D.build_train_val(DataConfig(train_list=str(lists / "ints.txt"), val_split=0.5, image_size=32))
    assert list(b2.pre.classes) == ["0", "5"] and len(b2.val) == 6
    (lists / "bad.txt").write_text("nothere.jpg cat\n")
    with pytest.raises(D.DataError, match="list file's folder"):
        D.build_train_val(DataConfig(train_list=str(lists / "bad.txt")))


def test_write_splits_round_trip(kaggle_dir, tmp_path):
    b = D.build_train_val(kcfg(kaggle_dir))
    files = D.write_splits(b, tmp_path / "run")
    assert [f.name for f in files] == ["train.csv", "val.csv"]
    assert files[0].read_text().splitlines()[0] == "path,label"
    cfg = DataConfig(train_list=str(files[0]), val_list=str(files[1]), image_size=32)
    b2 = D.build_train_val(cfg)
    assert list(b2.pre.classes) == list(b.pre.classes)
    for name in ("train", "val"):
        assert sorted(b2.splits[name]) == sorted((os.path.abspath(p), y) for p, y in b.splits[name])


# --- predict paths --------------------------------------------------------------------------------

def test_build_paths(folder_dir):
    ds = D.build_paths([str(folder_dir / "ant")], rgb(()))
    assert len(ds) == 8 and ds[0].id == str(folder_dir / "ant" / "ant_0.jpg") and ds[0].label == -1
    ds = D.build_paths([str(folder_dir / "*" / "*_1.jpg"), str(folder_dir / "bee" / "bee_1.jpg")], rgb(()))
    assert len(ds) == 3 and ds[2].image.shape == (3, 32, 32)
    gray = D.build_paths([str(folder_dir / "cow" / "cow_0.jpg")],
                         D.Preprocess((), 1, D.FMNIST_MEAN, D.FMNIST_STD, 28, "squash"))
    assert gray[0].image.shape == (1, 28, 28)
    with pytest.raises(D.DataError, match="no image files"):
        D.build_paths([str(folder_dir / "*.png")], rgb(()))
    with pytest.raises(D.DataError, match="no such file"):
        D.build_paths([str(folder_dir / "missing.jpg")], rgb(()))


# --- loader ---------------------------------------------------------------------------------------

def test_make_loader_workers_skip_bad_and_seeded_order(tmp_path):
    info = make_kaggle(tmp_path, n_per_class=6, n_test=0)
    b = D.build_train_val(kcfg(tmp_path, val_split=0.0))
    bad_files = D.BadFiles(tmp_path / "bad_files.txt")
    orders = []
    for seed in (7, 7, 8):
        loader = D.make_loader(b.train, batch_size=4, num_workers=2, shuffle=True, seed=seed)
        assert loader.persistent_workers and loader.collate_fn is D.collate_items
        ids: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", D.BadImageWarning)
            for batch in loader:
                assert batch.images.shape[0] == len(batch.labels) == len(batch.ids)
                ids += batch.ids
                bad_files.add(batch.bad)
        assert sorted(ids) == sorted(p.stem for p in info["good"])
        orders.append(ids)
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert bad_files.count == 3 and len((tmp_path / "bad_files.txt").read_text().splitlines()) == 3
    assert D.resolve_workers(-1) == min(4, os.cpu_count()) and D.resolve_workers(0) == 0


def test_datagen_is_learnable():
    """Class means differ clearly at 32 px: colour separates cats from dogs."""
    rng = __import__("numpy").random.default_rng(0)
    cat, dog = pattern(0, 32, 32, rng).mean((0, 1)), pattern(1, 32, 32, rng).mean((0, 1))
    assert cat[0] > cat[2] + 50 and dog[2] > dog[0] + 50
