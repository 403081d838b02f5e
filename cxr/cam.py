"""Where the model looked: Grad-CAM (pytorch-grad-cam) on the last block of each member's feature extractor,
averaged over the ensemble's members, laid over the film at its own size and aspect. The members run in the precision
they predict in (cxr.precision); the map itself is computed in float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from cxr.augment import BatchPipeline
from cxr.models import CxrNet, data_config
from cxr.precision import autocast, resolve_precision


def target_layer(model: CxrNet) -> torch.nn.Module:
    """The last block of the feature extractor, found from timm's feature_info (any timm backbone)."""
    info = getattr(model.backbone, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model.backbone).__name__} has no timm feature_info: Grad-CAM needs a CNN backbone")
    last = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
    return model.backbone.get_submodule(last)


def grad_cam(members: list[CxrNet], image: np.ndarray, image_size: int, *, contrast_norm: str,
             precision: str = "auto") -> np.ndarray:
    """(image_size, image_size) map in [0, 1]: the mean of the members' Grad-CAMs for the pneumonia logit, on the
    film as the members see it (contrast-normalised as they trained), each member in the precision the config key's
    value means on its device."""
    maps = []
    for model in members:
        device = next(model.parameters()).device
        arithmetic = resolve_precision(precision, device)
        dc = data_config(model)
        pipeline = BatchPipeline(image_size, dc["mean"], dc["std"], contrast_norm=contrast_norm).to(device)
        x = pipeline(torch.from_numpy(image[None]), train=False)
        layer = target_layer(model)
        # the layer's output (and so its gradient) in float32: pytorch-grad-cam reads both as numpy, which has no bf16
        as_float = layer.register_forward_hook(lambda module, inputs, output: output.float())
        try:
            with GradCAM(model=model, target_layers=[layer]) as cam, autocast(arithmetic, device):
                maps.append(cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)])[0])
        finally:
            as_float.remove()
    return np.mean(maps, axis=0)


def write_overlay(film: np.ndarray, heat: np.ndarray, out: str | Path) -> Path:
    """The map resized to the film's own size (aspect kept) and blended over it as a PNG."""
    h, w = film.shape
    heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    rgb = np.repeat((film.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    Image.fromarray(show_cam_on_image(rgb, np.clip(heat, 0, 1), use_rgb=True)).save(out)
    return Path(out)
