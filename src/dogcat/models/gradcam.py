"""Grad-CAM (Selvaraju et al., 2017): where in an image a model found the evidence for a class.

The heatmap of class c at a layer with output maps A_k is ReLU(sum_k alpha_k A_k), where alpha_k is the mean over
positions of d score_c / d A_k; it is upsampled (bilinear) to the input's size and scaled to [0, 1] per image.

Computed by captum's ``LayerGradCam`` (PyTorch's own interpretability library, ``pip install
'dogcat-vision[explain]'``): it owns the hooks, the gradients and the weighting, and needs nothing dogcat does not
already install. pytorch-grad-cam (``grad-cam``) would do the same, but pulls in scikit-learn, SciPy and ttach for
methods dogcat does not use. What is ours: choosing the layer (:func:`pick_layer`) and the scaling to [0, 1].
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from . import ModelError, head_module
from .summary import eval_mode, placement, unwrap

INSTALL_HINT = ("Grad-CAM needs the optional package captum: pip install 'dogcat-vision[explain]' (in this "
                "repository: .venv/bin/pip install -e '.[explain]')")
# (normalised N x C x H x W images, a class per image) -> N x H x W heatmaps in [0, 1]; explainer(model) is one
Explain = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]


class GradCamError(ModelError):
    """Grad-CAM cannot be computed for this model or layer (or captum is missing); the CLI exits 2."""


def require_captum() -> Any:
    """captum's ``attr`` module, or a :class:`GradCamError` saying how to install it."""
    try:
        from captum import attr
    except ImportError as e:
        raise GradCamError(INSTALL_HINT) from e
    return attr


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def pick_layer(model: nn.Module, input_shape: Sequence[int]) -> str:
    """The layer Grad-CAM looks at when none is named: of the modules outside the classifier head that are or
    hold a ``Conv2d`` and output a 4-D map larger than 1 x 1, the one whose forward pass finished last.

    A container finishes after its children, so that is the outermost last convolutional block: ``layer4``
    (ResNet), ``features`` (SqueezeNet, whose 1 x 1-conv classifier is the head), ``features.6`` (smallcnn: its
    last conv block, before the grid pooling). A block rather than its last ``Conv2d``: its output has passed
    the normalisation and ReLU, as in the paper. Found with one forward pass of zeros (``input_shape``: one
    image's C, H, W, or N, C, H, W) in eval mode without gradients."""
    model = unwrap(model)
    head = head_module(model)
    in_head = {id(m) for m in head.modules()} if head is not None else set()
    finished: list[tuple[str, Any]] = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: finished.append((name, out)))
               for name, m in model.named_modules() if name and id(m) not in in_head and _has_conv(m)]
    device, dtype = placement(model)
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *input_shape[-3:], device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    maps = [name for name, out in finished
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1 and out.shape[-2] > 1]
    if not maps:
        raise GradCamError(f"{type(model).__name__} has no convolutional layer with a spatial output at "
                           f"{'x'.join(map(str, input_shape[-2:]))} pixels for Grad-CAM to look at; name one "
                           "with --layer (`dogcat summary --model=NAME` lists the layers and their output shapes)")
    return maps[-1]


def get_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module named ``layer`` (as ``named_modules`` names it), or a :class:`GradCamError` with close names."""
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GradCamError(f"--layer={layer!r} is not a layer of {type(model).__name__}{hint} "
                           "(`dogcat summary --model=NAME` lists them)")
    return model.get_submodule(layer)


def gradcam(model: nn.Module, images: torch.Tensor, targets: Sequence[int], layer: str | None = None) -> torch.Tensor:
    """Grad-CAM heatmaps (N, H, W), each scaled to [0, 1] (all zeros where the layer holds no evidence for the
    class), of a normalised batch ``images`` for ``targets`` (one class index per image), at ``layer`` (a module
    name; default :func:`pick_layer`). The model runs in eval mode, in its own dtype, on its own device;
    only the gradients at the layer are taken, so no parameter's ``.grad`` changes. Returned on the CPU."""
    attr = require_captum()
    model = unwrap(model)
    name = layer or pick_layer(model, tuple(images.shape))
    module = get_layer(model, name)
    x = images.to(*placement(model))
    with eval_mode(model), torch.enable_grad():  # enable_grad: a caller inside no_grad (a report) gets maps too
        cam = attr.LayerGradCam(model, module).attribute(x, target=[int(t) for t in targets],
                                                         relu_attributions=True)
    if cam.ndim != 4:
        raise GradCamError(f"layer {name!r} outputs a {cam.ndim}-D tensor, not maps (N, C, H, W): Grad-CAM needs "
                           "a convolutional layer (`dogcat summary --model=NAME` lists the layers' output shapes)")
    cam = attr.LayerAttribution.interpolate(cam.detach().float(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    cam = cam[:, 0].clamp_min(0)  # bilinear keeps it >= 0; the clamp only removes rounding below zero
    return (cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).cpu()


def explainer(model: nn.Module, layer: str | None = None) -> Explain:
    """``explain(images, classes) -> heatmaps``: :func:`gradcam` of ``model`` (the plain module, not a TTA
    wrapper) bound to it, for :func:`~dogcat.tracking.report.write_report`'s ``explain`` argument."""
    return functools.partial(gradcam, model, layer=layer)
