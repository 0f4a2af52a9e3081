"""Fine-tuning: a pretrained timm model's input (pretrained_cfg) in Preprocess and checkpoints, --pretrained files
(safetensors / state dicts in timm or torchvision naming, made here), --freeze, --unfreeze-at (exact resume across
it) and --cache-features (the backbone runs once per image, the head trains as it would on the images)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

import dogcat
from dogcat.config import ConfigError, load_config
from dogcat.data import build_train_val, eval_transform_for
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.optim import build_optimizer
from dogcat.models import build_model, pretrained_input, register
from dogcat.models.freeze import train_mode
from dogcat.models.weights import WeightsError
from dogcat.preprocess import Preprocess
from datagen import make_kaggle, tiny_options

BACKBONE_IMAGES = [0]  # images the counting model's backbone has seen


@register("counting-cnn", "a tiny CNN whose backbone counts the images it sees (tests)")
def _counting_cnn(num_classes: int, in_chans: int = 3, pretrained: str | None = None) -> nn.Module:
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.classifier = nn.Linear(8, num_classes)
    model.features.register_forward_hook(lambda m, a, out: BACKBONE_IMAGES.__setitem__(0, BACKBONE_IMAGES[0] + len(out)))
    model.forward = lambda x: model.classifier(model.features(x))  # type: ignore[method-assign]
    return model


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("k")
    make_kaggle(root, n_per_class=6, n_test=2, bad=False, sizes=(32, 40))
    return root


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    """timm's test_resnet with a 1000-class head, as a state dict and as safetensors."""
    torch.manual_seed(1)
    sd = timm.create_model("test_resnet", num_classes=1000).state_dict()
    folder = tmp_path_factory.mktemp("w")
    torch.save(sd, folder / "w.pth")
    save_file(sd, str(folder / "w.safetensors"))
    return folder, sd


def _opts(kaggle, tmp_path, **kw):
    return tiny_options(kaggle, tmp_path / "runs", **kw)


def test_pretrained_cfg_reaches_preprocess_and_checkpoint(kaggle, tmp_path, timm_file):
    folder, _ = timm_file
    r = dogcat.train(_opts(kaggle, tmp_path, model="timm:test_resnet", pretrained=str(folder / "w.pth"),
                           limit_train_batches=1))
    pre = load_checkpoint(r.run_dir / "checkpoints" / "last.pt")["preprocess"]
    want = pretrained_input("timm:test_resnet", "x")  # timm: mean/std 0.5, crop 0.95
    assert pre["mean"] == pytest.approx(list(want["mean"])) and pre["std"] == pytest.approx([0.5] * 3)
    assert pre["crop_pct"] == pytest.approx(0.95) and pre["interpolation"] == want["interpolation"]
    assert pre["size"] == 32  # --image-size stays the network input
    loaded = dogcat.load(r.run_dir)  # the model keeps them: eval resize to round(32 / 0.95) = 34
    assert loaded.pre.crop_pct == pytest.approx(0.95) and loaded.pre.resize_to == 34
    # --normalize=imagenet wins over the weights' statistics; the crop fraction still follows them
    cfg = load_config(_opts(kaggle, tmp_path, normalize="imagenet"))
    data = build_train_val(cfg.data, model_input=want)
    assert data.pre.mean == pytest.approx((0.485, 0.456, 0.406)) and data.pre.crop_pct == pytest.approx(0.95)


def test_old_preprocess_loads_with_the_old_rule():
    old = {"classes": ["cat", "dog"], "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "size": 32,
           "resize": "crop"}
    pre = Preprocess.from_dict(old)
    assert (pre.interpolation, pre.crop_pct, pre.resize_to) == ("bilinear", 0.875, 37)
    new = Preprocess.from_dict({**old, "interpolation": "bicubic", "crop_pct": 1.0})
    resize = eval_transform_for(new).transforms[0]
    assert resize.size == [32] and resize.interpolation.value == "bicubic"
    assert Preprocess.from_dict(new.to_dict()) == new


@pytest.mark.parametrize("name", ["w.pth", "w.safetensors"])
def test_pretrained_file_loads_backbone_and_drops_other_head(timm_file, name, caplog):
    folder, sd = timm_file
    model = build_model("timm:test_resnet", 3, 3, str(folder / name))
    own = model.state_dict()
    assert torch.equal(own["conv1.0.weight"], sd["conv1.0.weight"]) and own["fc.weight"].shape[0] == 3
    assert "classifier head is new" in caplog.text


def test_torchvision_naming_and_a_file_that_does_not_fit(tmp_path, kaggle):
    torch.manual_seed(2)
    tv = build_model("resnet18", 1000).state_dict()  # torchvision's keys, 1000 classes
    torch.save(tv, tmp_path / "tv.pth")
    model = build_model("timm:resnet18", 2, 3, str(tmp_path / "tv.pth"))  # timm's ResNet shares the naming
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], tv["layer4.1.conv2.weight"])
    part = {k: v for k, v in tv.items() if not k.startswith("layer4")}  # a few keys fit, the backbone does not
    torch.save(part, tmp_path / "part.pth")
    with pytest.raises(WeightsError, match="backbone weights missing"):
        build_model("resnet18", 2, 3, str(tmp_path / "part.pth"))
    runs = tmp_path / "runs"
    with pytest.raises(WeightsError):
        dogcat.train(_opts(kaggle, tmp_path, model="resnet18", pretrained=str(tmp_path / "part.pth")))
    assert not runs.exists() or not any(runs.iterdir())  # refused before any run folder


def test_freeze_groups_excluded_from_optimizer_and_norms_in_eval():
    cfg = load_config({"model": "timm:test_resnet", "freeze": "1"})
    model = build_model("timm:test_resnet", 2)
    opt = build_optimizer(model, cfg)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    stem = [p for n, p in model.named_parameters() if n.startswith(("conv1", "bn1"))]  # timm group 0
    assert stem and not any(p.requires_grad or id(p) in in_opt for p in stem)
    assert all(p.requires_grad and id(p) in in_opt for n, p in model.named_parameters() if n.startswith("layer1"))
    train_mode(model)
    assert not model.bn1.training and model.layer1[0].bn1.training
    with pytest.raises(ConfigError, match="--freeze"):
        load_config({"freeze": "some"})
    with pytest.raises(ConfigError, match="--unfreeze-at"):
        load_config({"unfreeze_at": 2})


def _weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def test_unfreeze_at_trains_backbone_after_and_resumes_exactly(kaggle, tmp_path):
    opts = _opts(kaggle, tmp_path, freeze="backbone", unfreeze_at=2, max_epoch=3, save_every_epochs=1)
    torch.manual_seed(0)
    init = build_model("smallcnn", 2, 3).state_dict()
    whole = dogcat.train(opts).run_dir
    conv, head = "features.0.0.weight", "classifier.1.weight"
    e1 = _weights(whole, "epoch-0001.pt")
    assert torch.equal(e1[conv], init[conv]) and not torch.equal(e1[head], init[head])  # epoch 1: head only
    end = _weights(whole)
    assert not torch.equal(end[conv], e1[conv])  # from epoch 2 on the backbone trains
    for stop in (2, 4):  # 3 steps an epoch: stopped before the unfreeze epoch, and inside it
        part = dogcat.train({**opts, "max_steps": stop})
        assert part.stopped
        resumed = dogcat.train(resume=str(part.run_dir), runs_root=opts["runs_root"])
        got = _weights(resumed.run_dir)
        assert all(torch.equal(got[k], end[k]) for k in end), f"resume after step {stop} differs"


def test_cache_features_trains_the_same_head_with_one_backbone_pass(kaggle, tmp_path):
    opts = _opts(kaggle, tmp_path, model="counting-cnn", freeze="backbone", augment="none", max_epoch=3,
                 logger="none")  # no TensorBoard graph or embeddings: only training and validation count
    BACKBONE_IMAGES[0] = 0
    plain = dogcat.train(opts)
    per_run = BACKBONE_IMAGES[0]
    BACKBONE_IMAGES[0] = 0
    cached = dogcat.train({**opts, "cache_features": True})
    images = 12 + 1  # each image once (8 training, 4 validation), + the 1-image size check before the run
    assert BACKBONE_IMAGES[0] == images and per_run >= 3 * 12
    a, b = _weights(plain.run_dir), _weights(cached.run_dir)
    assert set(a) == set(b) and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert plain.history[-1]["val_loss"] == pytest.approx(cached.history[-1]["val_loss"], abs=1e-5)
    with pytest.raises(ConfigError, match="--augment=none"):
        load_config({**opts, "augment": "default", "cache_features": True})
