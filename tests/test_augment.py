"""Augmentation presets and random erasing: on each data path (image files, packed cache, in-memory arrays),
seeded (the same seed draws the same pictures), and a run with a preset on resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dogcat import ConfigError, load_config, train
from dogcat.data import SeededItems, build_train_val
from dogcat.data.augment import PRESETS, BatchPolicy

PATHS = ("files", "cache", "arrays")


def bundle(path: str, folder: Path, fmnist: Path, augment: str, erasing: float = 0.0):
    if path == "arrays":
        opts = {"fashion_mnist_root": str(fmnist), "dataset": "fashion-mnist", "image_size": 28}
    else:
        opts = {"train_data_root": str(folder), "image_size": 32, "cache": path == "cache", "num_workers": 0}
    return build_train_val(load_config({**opts, "augment": augment, "random_erasing": erasing, "val_split": 0.25}).data)


def train_batch(b, seed: int) -> torch.Tensor:
    """A training batch of 8 as the trainer gets it: loaded under the sampler's seeds, then batch_transform."""
    items = SeededItems(b.train)
    keys = [(i, seed * 100 + i) for i in range(8)]
    if hasattr(b.train, "__getitems__"):
        batch = items.__getitems__(keys)
        images, bseed = batch.images, batch.seed
    else:  # image files: one seeded item at a time, then collated
        images, bseed = torch.stack([items[k].image for k in keys]), 0
    return b.batch_transform(images, bseed).clone()  # BatchNormalize reuses its output buffers


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_on_each_path_is_seeded_and_applied(path, preset, folder_dir, fmnist_dir):
    plain = bundle(path, folder_dir, fmnist_dir, "default")
    aug = bundle(path, folder_dir, fmnist_dir, preset, erasing=0.5)
    a1, a2, p = train_batch(aug, 3), train_batch(aug, 3), train_batch(plain, 3)
    assert a1.dtype == torch.float32 and a1.shape == p.shape
    assert torch.equal(a1, a2)  # the same seeds: the same pictures (what exact resume needs)
    assert not torch.equal(a1, p)  # the policy changed them
    assert not torch.equal(a1, train_batch(aug, 4))  # other seeds, other pictures


def test_random_erasing_fills_with_the_mean_colour():
    x = torch.full((6, 3, 16, 16), 255, dtype=torch.uint8)
    y = BatchPolicy("none", 1.0, (0.2, 0.4, 0.6))(x, seed=1)
    for img in y:  # every image erased (p = 1), with round(mean * 255) per channel
        erased = (img != 255).all(0)
        assert erased.any()
        assert img[:, erased].unique(dim=1).tolist() == [[51], [102], [153]]
    assert torch.equal(y, BatchPolicy("none", 1.0, (0.2, 0.4, 0.6))(x, seed=1))


def test_bad_values_are_one_line_errors():
    with pytest.raises(ConfigError, match="randaugment"):
        load_config({"augment": "randaug"})
    with pytest.raises(ConfigError, match=r"random-erasing=1.5 is out of range"):
        load_config({"random_erasing": "1.5"})


def test_resumed_run_with_a_preset_equals_uninterrupted(fmnist_dir, tmp_path):
    """120 training images, batch 16: 8 steps an epoch; stopped at step 5 and resumed."""
    def opts(env: str, **kw) -> dict:
        return {"fashion_mnist_root": str(fmnist_dir), "dataset": "fashion-mnist", "image_size": 28,
                "model": "smallcnn", "batch_size": 16, "val_split": 0.4, "max_epoch": 2, "progress": "none",
                "deterministic": True, "debug_file": None, "runs_root": str(tmp_path), "keep_top_k": 0,
                "augment": "trivialaugment", "random_erasing": 0.5, "env": env, **kw}

    from test_checkpoint import logged, weights

    ref = train(load_config(opts("ref"))).run_dir
    cut = tmp_path / "cut"
    assert train(load_config(opts("cut", max_steps=5))).stopped
    train(load_config({"resume": str(cut)}, config_file=cut / "config.yaml"))
    assert logged(ref) == logged(cut)
    for k, v in weights(ref).items():
        assert torch.equal(v, weights(cut)[k]), k
