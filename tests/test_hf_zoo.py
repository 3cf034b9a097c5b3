"""DESIGN.md section 8 properties 1-3 and 6 on Hugging Face ``transformers`` models.

Each model is built from a small config (no download), randomized norms, and checked at three
random width assignments; the search, retrain and ONNX run on a ResNet whose forward returns a
``ModelOutput`` (its ``logits`` entry is what they train and score). The default run keeps the
basic-block ResNet (4 s); every other model is marked ``slow`` (4-45 s each on one CPU core).
Skipped, with that reason, where ``transformers`` is not installed (it is a dev dependency).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import dmcpfx
from equivalence import TOL, check_properties, randomize_norms
from marks import slow_unless

T = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[dev]')")

SMALL_TEXT = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128)
STAGES = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])


def _image(size: int) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))


# name -> (model factory, input); models built from a config, never downloaded
MODELS = {
    "resnet": lambda: (T.ResNetForImageClassification(T.ResNetConfig(embedding_size=16, layer_type="bottleneck",
                                                                     **STAGES)), _image(32)),
    "resnet_basic": lambda: (T.ResNetForImageClassification(T.ResNetConfig(embedding_size=16, layer_type="basic",
                                                                           **STAGES)), _image(32)),
    "convnext": lambda: (T.ConvNextForImageClassification(T.ConvNextConfig(**STAGES)), _image(64)),
    "convnextv2": lambda: (T.ConvNextV2ForImageClassification(T.ConvNextV2Config(**STAGES)), _image(64)),
    "mobilenet_v1": lambda: (T.MobileNetV1ForImageClassification(T.MobileNetV1Config(depth_multiplier=0.25)),
                             _image(64)),
    "mobilenet_v2": lambda: (T.MobileNetV2ForImageClassification(T.MobileNetV2Config(depth_multiplier=0.35)),
                             _image(64)),
    "regnet": lambda: (T.RegNetForImageClassification(T.RegNetConfig(embedding_size=16, groups_width=8, **STAGES)),
                       _image(64)),
    "vit": lambda: (T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, **SMALL_TEXT)), _image(32)),
    "swin": lambda: (T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                               num_heads=[2, 2], window_size=4)), _image(32)),
    "mobilevit": lambda: (T.MobileViTForImageClassification(T.MobileViTConfig(
        image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 160])), _image(64)),
    "segformer": lambda: (T.SegformerForSemanticSegmentation(T.SegformerConfig(
        hidden_sizes=[16, 32, 40, 64], num_encoder_blocks=4, depths=[1, 1, 1, 1], decoder_hidden_size=32)), _image(64)),
    "levit": lambda: (T.LevitForImageClassification(T.LevitConfig(image_size=64)), _image(64)),
    "poolformer": lambda: (T.PoolFormerForImageClassification(T.PoolFormerConfig(**STAGES)), _image(64)),
    "dinov2": lambda: (T.Dinov2Model(T.Dinov2Config(image_size=32, patch_size=8, **SMALL_TEXT)), _image(32)),
    "bert": lambda: (T.BertModel(T.BertConfig(vocab_size=100, **SMALL_TEXT)),
                     torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(1))),
}
DEFAULT = {"resnet_basic"}


def build(name: str):
    """The model in eval mode with random norms and Kaiming-scaled conv/linear weights (HF's
    std-0.02 init makes deep outputs nearly independent of early channels, so that pruning them
    would change the output by less than the check's tolerance), run once: transformers installs
    its output-recording hooks on the first call, which is not ours to count as a change."""
    torch.manual_seed(0)
    model, x = MODELS[name]()
    model.eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight)
    randomize_norms(model)
    with torch.no_grad():
        model(x)
    return model, x


@pytest.mark.parametrize("name", slow_unless(MODELS, DEFAULT))
def test_properties_hold(name):
    model, x = build(name)
    figures = check_properties(model, x)
    assert figures["groups"] >= 1


def test_a_model_output_is_searched_retrained_and_exported(tmp_path):
    """search -> derive -> materialize -> retrain -> ONNX on a ``ModelOutput`` model: the compact
    model keeps its class and its ``ModelOutput``, and ONNX gives its logits."""
    model, _ = build("resnet_basic")
    x = torch.randn(2, 3, 32, 32)
    data = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))), batch_size=4)
    space = dmcpfx.instrument(model, x)
    result = dmcpfx.search(space, data, target=0.5, epochs=2, seed=0, progress=False)
    assert result.steps == 4 and 0 < result.expected < result.full
    widths = dmcpfx.derive(space, "expected", target=0.5)
    compact = dmcpfx.materialize(space, widths, x)
    assert type(compact) is type(model)
    dmcpfx.retrain(compact, data, epochs=1, progress=False)
    compact.eval()
    with torch.no_grad():
        logits = compact(x).logits
    assert logits.shape == (2, 2)
    diff = dmcpfx.export_onnx(compact, x, tmp_path / "hf_resnet.onnx")
    assert diff <= TOL * max(1.0, logits.abs().max().item())
