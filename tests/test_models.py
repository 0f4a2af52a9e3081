"""Model registry: every built-in builds and trains a step; timm/torchvision names; weight files."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dogcat.models import ModelError, build_model, head_module, list_models, register
from dogcat.models.weights import WeightsError, load_weights


@pytest.mark.parametrize("name", sorted(list_models()) + ["timm:resnet10t", "torchvision:mobilenet_v3_small"])
@pytest.mark.parametrize("chans", [1, 3])
def test_builds_forward_backward(name, chans):
    model = build_model(name, num_classes=3, in_chans=chans)
    out = model(torch.randn(2, chans, 32, 32))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert head_module(model) is not None


def test_names_case_insensitive_and_unknown():
    assert type(build_model("ResNet34", 2)).__name__ == "ResNet"
    with pytest.raises(ModelError, match="resnet34"):
        build_model("resnet43", 2)
    with pytest.raises(ModelError, match="timm has no model"):
        build_model("timm:no_such_net", 2)
    with pytest.raises(ValueError, match="twice"):
        register("smallcnn")(lambda **kw: nn.Linear(1, 1))


@pytest.mark.parametrize("name", ["resnet18", "timm:resnet10t", "squeezenet"])
def test_pretrained_local_file_keeps_new_head(name, tmp_path):
    """Weights saved for 1000 classes load into a 2-class model: backbone copied, head left new."""
    src = build_model(name, num_classes=1000)
    path = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), path)
    model = build_model(name, num_classes=2, pretrained=str(path))
    head_ids = {id(p) for p in head_module(model).parameters()}
    src_sd = src.state_dict()
    for k, v in model.state_dict().items():
        if v.shape == src_sd[k].shape and not any(id(p) == id(v) for p in head_ids):
            assert torch.equal(v, src_sd[k]), k


def test_pretrained_adapts_first_conv_to_grayscale(tmp_path):
    src = build_model("resnet18", num_classes=10)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = build_model("resnet18", num_classes=10, in_chans=1, pretrained=str(tmp_path / "w.pth"))
    assert torch.allclose(model.conv1.weight, src.conv1.weight.sum(1, keepdim=True))


def test_module_prefix_and_strictness(tmp_path):
    model = build_model("smallcnn", 4, 1)
    wrapped = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save(wrapped, tmp_path / "ddp.pth")
    fresh = build_model("smallcnn", 4, 1)
    load_weights(fresh, tmp_path / "ddp.pth", strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    other = build_model("smallcnn", 7, 1)  # another head size
    with pytest.raises(WeightsError, match="load-not-strict"):
        load_weights(other, tmp_path / "ddp.pth", strict=True)
    rep = load_weights(other, tmp_path / "ddp.pth", strict=False)
    assert rep.mismatched and rep.matched
    with pytest.raises(WeightsError, match="nothing"):
        load_weights(build_model("resnet18", 2), tmp_path / "ddp.pth", strict=False)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="refused"):
        load_weights(build_model("smallcnn", 2, 1), tmp_path / "evil.pt")
    assert not marker.exists()
