"""cxr.cam: a member's Grad-CAM in the precision it predicts in (bf16 autocast is real on the CPU)."""

from __future__ import annotations

import numpy as np

from cxr.cam import grad_cam
from cxr.models import create_model


def test_a_bf16_member_gives_its_map_in_bf16_computed_through_float32():
    member = create_model("test_efficientnet", pretrained=False).eval()
    film = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # at 32 px the map would be 1 x 1
    full, half = grad_cam([member], film, 64, contrast_norm="none", precision="fp32"), grad_cam(
        [member], film, 64, contrast_norm="none", precision="bf16")
    assert half.shape == full.shape == (64, 64) and np.isfinite(half).all() and full.max() > 0
    assert not np.array_equal(half, full)  # the member ran in bf16
    assert np.abs(half - full).mean() < 0.05  # the same map, rounded
    assert np.array_equal(grad_cam([member], film, 64, contrast_norm="none"), full)  # auto on the CPU is fp32
