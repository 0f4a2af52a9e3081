"""`dogcat summary` and the training's summary line: FLOPs of known layers by hand, parameter counts, the
activation estimate, torchvision's published figures, the table and its JSON, and a pass that changes nothing."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from dogcat.cli import main
from dogcat.models import build_model
from dogcat.models.summary import describe, summarize, summary_line


def tiny(inplace: bool = False) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(800, 5))


def test_flops_params_and_activations_of_known_layers_by_hand():
    model = tiny()
    model[0].requires_grad_(False)  # a frozen conv
    s = summarize(model, (4, 3, 10, 10))  # 4 images: every figure is per image
    conv = 2 * (3 * 3 * 3) * (8 * 10 * 10)  # 2 FLOPs per multiply-add, 27 of them per output value, 800 outputs
    linear = 2 * 800 * 5
    by_name = {r.name: r for r in s.layers}
    assert by_name["0"].flops == conv == 43_200 and by_name["3"].flops == linear == 8_000
    assert s.flops == conv + linear
    assert (by_name["0"].params, by_name["3"].params) == (3 * 8 * 9 + 8, 800 * 5 + 5)
    assert (s.params, s.trainable, s.frozen) == (4229, 4005, 224)
    assert [r.output_shape for r in s.layers] == [[8, 10, 10], [8, 10, 10], [800], [5]]
    # input 300 + conv 800 + ReLU 800 + Linear 5 floats; Flatten is a view of the ReLU's output
    assert s.activation_bytes == 4 * (300 + 800 + 800 + 5)
    assert summarize(tiny(inplace=True), (1, 3, 10, 10)).activation_bytes == 4 * (300 + 800 + 5)  # shared
    strided = summarize(nn.Conv2d(1, 4, 3, stride=2), (1, 1, 9, 9))
    assert strided.flops == 2 * 9 * (4 * 4 * 4)


@pytest.mark.parametrize("name, weights", [("resnet18", "ResNet18_Weights"), ("resnet34", "ResNet34_Weights"),
                                           ("squeezenet", "SqueezeNet1_1_Weights")])
def test_builtin_models_match_torchvisions_published_figures(name, weights):
    """torchvision publishes each model's size and multiply-adds ("GFLOPS" in its tables are GMACs) at 224 px
    with 1000 classes; our counts, on the meta device, agree."""
    import torchvision.models as tvm

    meta = getattr(tvm, weights).DEFAULT.meta
    s = describe(name, 1000, 3, 224)
    assert s.params == meta["num_params"]
    assert round(s.flops / 2 / 1e9, 3) == pytest.approx(meta["_ops"], abs=0.002)


def test_summary_line_changes_nothing_and_never_raises():
    model = build_model("smallcnn", 10, 1).train()
    model.features[0].eval()  # a module kept in eval on purpose stays so
    bn_before = model.features[0][1].running_mean.clone()
    rng = torch.get_rng_state()
    line = summary_line(model, 1, 28, "smallcnn")
    assert line == ("smallcnn: 40,794 parameters (40,794 trainable), 11.1 MFLOPs/image, ~0.35 MB activations/image "
                    "at 28x28x1")
    assert model.training and not model.features[0].training and model.features[1].training
    assert torch.equal(model.features[0][1].running_mean, bn_before) and torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    model.features[0].requires_grad_(False)  # conv 144 + BatchNorm 32 parameters
    assert "(40,618 trainable, 176 frozen)" in summary_line(model, 1, 28, "smallcnn")
    bad = summary_line(model, 1, 2)  # too small for two poolings: counts, and the reason
    assert bad.startswith("SmallCNN: 40,794 parameters (40,618 trainable); FLOPs not measured (RuntimeError")


def test_cli_table_and_json(capsys):
    assert main(["summary", "--model=smallcnn", "--image-size=28", "--in-chans=1", "--num-classes=10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("smallcnn, 10 classes, input 28x28x1")
    assert any(line.split()[:3] == ["features.0.0", "Conv2d", "16x28x28"] and line.split()[3] == "144"
               for line in out.splitlines())
    assert "parameters: 40,794 (40,794 trainable, 0 frozen)" in out and "FLOPs per image: 11.1 MFLOPs" in out
    assert main(["summary", "--model", "smallcnn", "--image-size", "28", "--in-chans", "1", "--num-classes", "10",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = build_model("smallcnn", 10, 1)
    assert data["flops"] == summarize(model, (1, 1, 28, 28)).flops == 11_075_328
    assert data["params"] == sum(p.numel() for p in model.parameters()) and data["model"] == "smallcnn"
    names = [r["name"] for r in data["layers"]]
    assert all(model.get_submodule(n) is not None for n in names)  # the names --layer takes
    assert main(["summary", "--model=resnet18", "--depth=1", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["layers"]
    assert [r["name"] for r in top] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                                        "avgpool", "fc"]
    assert sum(r["flops"] for r in top) == describe("resnet18").flops


@pytest.mark.parametrize("argv, words", [
    (["--in-chans=0"], ["--in-chans=0", "out of range"]),
    (["--depth", "x"], ["--depth", "'x'"]),
    (["--model=squeezenet", "--image-size=8"], ["--image-size=8", "squeezenet"]),
    (["--model=resnet43"], ["resnet43", "did you mean"]),
])
def test_cli_refuses_with_one_line(argv, words, capsys):
    assert main(["summary", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
