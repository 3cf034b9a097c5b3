"""The timm sample of the zoo tests and the coverage benchmark: names, families, input sizes.

One model or more per timm family (CNNs of every kind, ConvNeXt / MetaFormer,
ViT / DeiT / Swin / MaxViT / MobileViT / EfficientFormer and hybrids), built with
``timm.create_model(name, pretrained=False, num_classes=10)`` at 96 px unless the
architecture fixes its input size (position embeddings, window partitions).
"""
from __future__ import annotations

import torch

FAMILIES = {
    "resnet": "resnet18 resnet50 resnet26d resnet50d wide_resnet50_2 resnetrs50 tresnet_m",
    "resnet-variants": "seresnet50 resnext26ts seresnext26d_32x4d ecaresnet26t skresnet18 res2net50_26w_4s "
                       "res2next50 resnest14d gcresnet33ts",
    "resnetv2": "resnetv2_50 resnetv2_50x1_bit",
    "regnet": "regnetx_002 regnety_002 regnety_008 regnetz_b16 regnetv_040",
    "efficientnet": "efficientnet_b0 efficientnet_lite0 efficientnetv2_rw_t tf_efficientnet_b0 "
                    "tf_efficientnetv2_b0 tf_efficientnet_lite0 tinynet_a",
    "mobilenet": "mobilenetv2_100 mobilenetv3_large_100 mobilenetv3_small_050 mobilenetv4_conv_small "
                 "mobilenetv4_hybrid_medium mnasnet_100 fbnetc_100 spnasnet_100 hardcorenas_a lcnet_050",
    "ghost-rexnet-mix": "ghostnet_100 ghostnetv2_100 rexnet_100 mixnet_s tf_mixnet_s repghostnet_050",
    "densenet-dla-dpn": "densenet121 densenetblur121d dla34 dla46_c dpn68b hrnet_w18_small selecsls42b",
    "csp-darknet": "cspresnet50 cspdarknet53 darknet53 cs3darknet_s",
    "vgg-repvgg-byob": "vgg11_bn repvgg_a0 mobileone_s0 ese_vovnet19b_dw gernet_s botnet26t_256 halonet26t "
                       "lambda_resnet26t",
    "nfnet": "dm_nfnet_f0 nf_resnet26 nf_regnet_b0",
    "inception-xception-nas": "inception_v3 inception_v4 xception41 legacy_xception nasnetalarge pnasnet5large",
    "convnext-metaformer": "convnext_atto convnextv2_atto convnext_nano poolformer_s12 poolformerv2_s12 "
                           "convformer_s18 caformer_s18 inception_next_tiny edgenext_xx_small",
    "efficient-hybrids": "efficientformer_l1 efficientformerv2_s0 fastvit_t8 efficientvit_b0 efficientvit_m0 "
                         "levit_128s levit_conv_128s",
    "vit-deit": "vit_tiny_patch16_224 vit_small_patch16_224 deit_tiny_patch16_224 deit_small_patch16_224 "
                "deit_tiny_distilled_patch16_224 beit_base_patch16_224 cait_xxs24_224 xcit_nano_12_p16_224 "
                "pit_ti_224 convit_tiny crossvit_tiny_240 visformer_tiny volo_d1_224",
    "swin-maxvit-coat": "swin_tiny_patch4_window7_224 swinv2_tiny_window8_256 maxvit_nano_rw_256 maxvit_tiny_tf_224 "
                        "coatnet_nano_rw_224 coat_lite_tiny twins_pcpvt_small pvt_v2_b0 nest_tiny",
    "mobilevit-tinyvit": "mobilevit_xxs mobilevitv2_050 tiny_vit_5m_224",
    "mlp": "mixer_b16_224 resmlp_12_224 gmlp_ti16_224 sequencer2d_s",
}
TIMM_MODELS = [name for names in FAMILIES.values() for name in names.split()]
FAMILY_OF = {name: family for family, names in FAMILIES.items() for name in names.split()}
#: the default (fast) test set: one per kind of wiring; the rest run under -m slow
# convnext_atto (11 s; channels-last LayerNorm) runs under -m slow: test_analysis.py's convnext
# test keeps that wiring in the default run
TIMM_DEFAULT = ["mobilenetv3_small_050", "deit_tiny_patch16_224"]


def timm_input_size(name: str) -> int:
    """96 px, unless the model fixes its input size (then its configured size)."""
    import timm

    cfg = timm.get_pretrained_cfg(name)
    fixed = cfg is not None and (getattr(cfg, "fixed_input_size", False) or any(
        key in name for key in ("vit", "deit", "swin", "maxvit", "coat", "cait", "xcit", "pit", "convit", "crossvit",
                                "volo", "mixer", "resmlp", "gmlp", "nest", "twins", "levit", "efficientformer",
                                "tiny_vit", "beit", "visformer", "sequencer", "botnet", "halonet", "lambda")))
    if fixed and cfg is not None:
        return int(cfg.input_size[-1])
    return 96


def build_timm(name: str):
    """(model, input) with seed 0, eval mode; norm statistics are randomized by the caller."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    size = timm_input_size(name)
    return model, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
