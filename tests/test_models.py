"""cxr.models: one-logit timm backbones, partial unfreezing, frozen BatchNorm kept in eval mode."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from cxr.config import TrainConfig
from cxr.errors import InputError
from cxr.models import CxrNet, count_blocks, create_model, data_config
from cxr.schedules import create_optimizer

BACKBONES = ["densenet121", "tf_efficientnetv2_s", "resnet50", "convnext_tiny"]
SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_trainable_parameters_grow_with_unfrozen_blocks(backbone: str) -> None:
    blocks = count_blocks(backbone)
    assert blocks >= 4
    counts = []
    for k in range(blocks + 1):
        with torch.device("meta"):  # structure and requires_grad only: fast, no memory
            model = create_model(backbone, pretrained=False, unfrozen_blocks=k)
        head = list(model.backbone.get_classifier().parameters())
        assert head and all(p.requires_grad for p in head), f"head frozen at unfrozen_blocks={k}"
        counts.append(_trainable(model))
    assert all(a < b for a, b in itertools.pairwise(counts)), counts
    with torch.device("meta"):
        everything = create_model(backbone, pretrained=False, unfrozen_blocks=None)
    total = sum(p.numel() for p in everything.parameters())
    assert _trainable(everything) == total == counts[-1]
    assert counts[0] < 0.01 * total  # unfrozen_blocks=0: little more than the head


@pytest.mark.parametrize("backbone", BACKBONES)
def test_frozen_batchnorm_stays_in_eval_and_keeps_its_statistics(backbone: str) -> None:
    torch.manual_seed(0)
    model = create_model(backbone, pretrained=False, dropout=0.1, unfrozen_blocks=1)
    model.train()
    bns = _batchnorms(model)
    frozen_bns = [m for m in bns if not any(p.requires_grad for p in m.parameters())]
    trained_bns = [m for m in bns if any(p.requires_grad for p in m.parameters())]
    if backbone == "convnext_tiny":
        assert not bns  # LayerNorm only: nothing with running statistics to protect
    else:
        assert frozen_bns and trained_bns
    assert all(not m.training for m in frozen_bns)
    assert all(m.training for m in trained_bns)
    assert model.backbone.get_classifier().training

    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = create_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.1))
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2,)
    nn.functional.binary_cross_entropy_with_logits(out, torch.tensor([0.0, 1.0])).backward()
    optimizer.step()
    after = model.state_dict()

    names = {id(m): n for n, m in model.named_modules()}
    for m in frozen_bns:
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            key = f"{names[id(m)]}.{stat}"
            assert torch.equal(after[key], before[key]), key
    for m in trained_bns:  # the same forward does update the statistics of trained blocks
        assert not torch.equal(after[f"{names[id(m)]}.running_mean"], before[f"{names[id(m)]}.running_mean"])
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    head = {f"backbone.{model.backbone.pretrained_cfg['classifier']}.weight"}
    assert all(not torch.equal(after[n], before[n]) for n in head)

    model.eval()
    assert all(not m.training for m in bns)
    model.train()
    assert all(not m.training for m in frozen_bns) and all(m.training for m in trained_bns)


def test_everything_trains_without_unfrozen_blocks() -> None:
    model = create_model("resnet18", pretrained=False, unfrozen_blocks=None)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(m.training for m in model.modules())
    assert _trainable(create_model("resnet18", pretrained=False, unfrozen_blocks=99)) == _trainable(model)


def test_one_logit_head_dropout_and_data_config() -> None:
    model = create_model("test_efficientnet", pretrained=False, dropout=0.3)
    assert isinstance(model, CxrNet)
    assert model.backbone.get_classifier().out_features == 1
    assert model.backbone.drop_rate == pytest.approx(0.3)
    model.eval()
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3,)
    config = data_config(model)
    assert len(config["mean"]) == 3 and len(config["std"]) == 3


@pytest.mark.parametrize("backbone", [f"tf_efficientnet_lite{i}" for i in range(3)])  # the cpu space's Lite family
def test_pretrained_weights_load_from_a_weights_dir(backbone: str) -> None:
    weights = SHARED_WEIGHTS / f"{backbone}.safetensors"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent (../shared is a development-machine folder)")
    from safetensors.torch import load_file

    expected = load_file(str(weights))
    model = create_model(backbone, pretrained=True, weights_dir=SHARED_WEIGHTS, unfrozen_blocks=2)
    state = model.backbone.state_dict()
    body = [k for k in expected if not k.startswith("classifier.")]
    assert len(body) > 100
    for key in body:
        assert torch.equal(state[key], expected[key]), key
    assert state["classifier.weight"].shape == (1, 1280)  # a fresh one-logit head
    assert data_config(model)["mean"] == pytest.approx((0.5, 0.5, 0.5))


def test_unknown_backbone_offers_close_matches() -> None:
    with pytest.raises(InputError, match=r"unknown backbone 'resnet5O'") as info:
        create_model("resnet5O", pretrained=False)
    assert "'resnet50'" in str(info.value)
    with pytest.raises(InputError, match=r"unknown backbone 'densenet12'.*densenet121"):
        count_blocks("densenet12")


def test_pretrained_without_weights_file(tmp_path: Path) -> None:
    (tmp_path / "resnet18.txt").write_text("not weights")
    with pytest.raises(InputError) as info:
        create_model("resnet18", pretrained=True, weights_dir=tmp_path)
    message = str(info.value)
    assert "'resnet18'" in message and str(tmp_path) in message
    assert "weights_dir" in message  # way out 1: a folder holding resnet18.safetensors
    assert "pretrained=False" in message  # way out 2: train from scratch
