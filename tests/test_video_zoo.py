"""DESIGN.md section 8 properties 1-3 and 6 on torchvision's video classifiers (3-D convolutions,
(2+1)-D factorized convolutions, 3-D shifted windows, S3D's separable 3-D convolutions).

Inputs are clips ``(1, 3, frames, H, W)``, the smallest each architecture accepts; randomized norm
statistics, three random width assignments per model. Every model takes 6-240 s on 2 CPU cores,
so all are marked ``slow`` (3-D convolutions in 1-D, 2-D and 3-D U-Nets run by default in
tests/test_transposed_conv.py).
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from equivalence import check_properties, randomize_norms

VIDEO = torchvision.models.list_models(module=torchvision.models.video)
# clip shape per model (frames, pixels): S3D's final pooling needs 16 frames at 224 px,
# MViT's position embeddings are fixed at 16 x 224 x 224
CLIP = {"s3d": (16, 224), "mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224),
        "swin3d_t": (8, 64), "swin3d_s": (8, 64), "swin3d_b": (8, 64)}


def build(name: str):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    randomize_norms(model)
    frames, size = CLIP.get(name, (4, 32))
    return model, torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1))


def test_video_zoo_has_9_models():
    assert len(VIDEO) == 9


@pytest.mark.slow
@pytest.mark.parametrize("name", VIDEO)
def test_properties_hold(name):
    model, x = build(name)
    figures = check_properties(model, x)
    assert figures["groups"] >= 1
