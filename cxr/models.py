"""timm backbones with a one-logit head and control over how many trailing blocks train.

Grayscale films are fed as 3 identical channels so every pretrained stem works unchanged.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

import timm
import torch
from timm.models import group_parameters
from torch import nn

from cxr.errors import InputError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")


class CxrNet(nn.Module):
    """A timm backbone whose frozen normalisation layers stay in eval mode whatever train() is told."""

    def __init__(self, backbone: nn.Module, frozen_norms: list[nn.Module]):
        super().__init__()
        self.backbone = backbone
        self._frozen_norms = frozen_norms  # plain list: not registered twice as submodules

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images).squeeze(-1)

    def train(self, mode: bool = True) -> CxrNet:
        super().train(mode)
        for norm in self._frozen_norms:
            norm.eval()  # running statistics of frozen blocks must keep their pretrained values
        return self

    def train_blocks(self, unfrozen_blocks: int | None) -> None:
        """Train the last unfrozen_blocks blocks and the head from now on (0: the head alone, as a linear probe)."""
        self._frozen_norms = _freeze(self.backbone, unfrozen_blocks)
        self.train(self.training)


def create_model(
    backbone: str,
    *,
    pretrained: bool = True,
    dropout: float = 0.0,
    unfrozen_blocks: int | None = None,
    weights_dir: str | Path | None = None,
    backbone_state: dict[str, torch.Tensor] | None = None,
) -> CxrNet:
    """A timm model with Dropout(p) + Linear(1) head; the last `unfrozen_blocks` blocks and the head train.

    Pretrained weights come from backbone_state (fetched earlier by pretrained_state), else from weights_dir,
    else from the timm hub."""
    check_backbone(backbone)
    kwargs = {"num_classes": 1, "drop_rate": dropout}
    if pretrained and backbone_state is not None:
        model = timm.create_model(backbone, pretrained=False, **kwargs)
        missing, unexpected = model.load_state_dict(backbone_state, strict=False)
        if unexpected or set(missing) - _head_names(model):
            raise InputError(f"backbone_state does not fit '{backbone}': pass the state pretrained_state('{backbone}') returns")
        return CxrNet(model, _freeze(model, unfrozen_blocks))
    if pretrained and weights_dir is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(_weights_file(backbone, Path(weights_dir)))}
    try:
        model = timm.create_model(backbone, pretrained=pretrained, **kwargs)
    except Exception as exc:  # timm raises many kinds (hub, network, missing file): all mean no weights
        if not pretrained:
            raise
        raise InputError(
            f"no pretrained weights for '{backbone}' ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
            f"put {backbone}.safetensors in a folder and pass weights_dir (--weights-dir), "
            "or train from scratch with pretrained=False (--no-pretrained)"
        ) from None
    return CxrNet(model, _freeze(model, unfrozen_blocks))


def pretrained_state(backbone: str, weights_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The backbone's pretrained weights without the new head: fetched once (hub or weights_dir) and handed to
    many create_model(backbone_state=...) calls, so trials need neither the hub nor the weights folder."""
    model = create_model(backbone, pretrained=True, weights_dir=weights_dir).backbone
    head = _head_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in head}


def _head_names(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier, which every run initialises from its own seed."""
    head = {id(t) for t in [*model.get_classifier().parameters(), *model.get_classifier().buffers()]}
    return {k for k, t in [*model.named_parameters(), *model.named_buffers()] if id(t) in head}


def check_backbone(backbone: str) -> None:
    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=5, cutoff=0.6)
        raise InputError(f"unknown backbone '{backbone}': close timm models are {close or 'none'}; see timm.list_models()")


@functools.cache
def count_blocks(backbone: str) -> int:
    """Number of blocks (stem first) that unfrozen_blocks counts from the end; the head is not one."""
    check_backbone(backbone)
    with torch.device("meta"):  # structure only: no memory, no weights
        model = timm.create_model(backbone, pretrained=False, num_classes=1)
    return len(_blocks(model))


def data_config(model: CxrNet) -> dict:
    """timm's pretrained data config (mean, std, input size) of the backbone."""
    return timm.data.resolve_model_data_config(model.backbone)


def _blocks(model: nn.Module) -> list[list[str]]:
    """Parameter names per block from timm's coarse group_matcher, in forward order; last group is the head."""
    if not hasattr(model, "group_matcher"):
        raise InputError(f"{type(model).__name__} has no timm group_matcher: use unfrozen_blocks=None")
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [groups[k] for k in sorted(groups)][:-1]


def block_parameters(model: CxrNet) -> list[list[nn.Parameter]]:
    """The parameters of each block that unfrozen_blocks counts (stem first), then the head's (every parameter in
    no block) last."""
    blocks = _blocks(model.backbone)
    params = dict(model.backbone.named_parameters())
    in_blocks = {name for block in blocks for name in block}
    return [[params[n] for n in block] for block in blocks] + [[p for n, p in params.items() if n not in in_blocks]]


def _freeze(model: nn.Module, unfrozen_blocks: int | None) -> list[nn.Module]:
    """Freeze all but the last unfrozen_blocks blocks (and the head); the frozen blocks' normalisation layers."""
    blocks = _blocks(model)
    kept = len(blocks) if unfrozen_blocks is None else min(unfrozen_blocks, len(blocks))
    frozen = {name for block in blocks[: len(blocks) - kept] for name in block}
    for name, param in model.named_parameters():
        param.requires_grad = name not in frozen
    if not frozen:
        return []
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def _weights_file(backbone: str, weights_dir: Path) -> Path:
    for suffix in WEIGHT_SUFFIXES:
        candidate = weights_dir / f"{backbone}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(
        f"no weights for '{backbone}' in {weights_dir} (looked for {backbone}{{{','.join(WEIGHT_SUFFIXES)}}}): "
        "add the file or pass another weights_dir (--weights-dir), or train from scratch with pretrained=False "
        "(--no-pretrained)"
    )
