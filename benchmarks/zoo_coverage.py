"""Print the channel-analysis coverage of the torchvision classification zoo.

For each model: number of groups, prunable groups, share of conv/linear output
channels that are prunable, frozen groups with their first reason, and the
analysis time. Usage:

    .venv/bin/python benchmarks/zoo_coverage.py [--models resnet50,vit_b_16] [--size 64]
"""
from __future__ import annotations

import argparse
import collections
import time
import warnings

import torch
import torchvision

import dmcpfx

SIZES = {"inception_v3": 299, "maxvit_t": 224, "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224,
         "vit_l_32": 224, "vit_h_14": 224}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: all 80)")
    parser.add_argument("--size", type=int, default=64, help="input size where the model allows it")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    total_channels = prunable_channels = 0
    analyzed = 0
    print(f"{'model':22s} {'groups':>6s} {'prun.':>6s} {'share':>6s} {'time':>6s}  frozen (count: first reason)")
    for name in names:
        model = torchvision.models.get_model(name, weights=None).eval()
        size = SIZES.get(name, args.size)
        x = torch.randn(1, 3, size, size)
        start = time.perf_counter()
        try:
            graph = dmcpfx.analyze(model, x)
        except dmcpfx.DmcpfxError as exc:
            print(f"{name:22s} FAILED: {exc}")
            continue
        elapsed = time.perf_counter() - start
        analyzed += 1
        reasons = collections.Counter(g.frozen_reasons[0].split(" (node")[0][:60] for g in graph.frozen.values() if g.members)
        shown = [g for g in graph.groups.values() if g.members]
        prunable, total = graph.channel_counts()
        prunable_channels += prunable
        total_channels += total
        frozen = "; ".join(f"{n}: {r}" for r, n in reasons.most_common(3))
        print(f"{name:22s} {len(shown):6d} {len(graph.prunable):6d} {graph.prunable_share():6.1%} {elapsed:5.2f}s  {frozen}", flush=True)
    share = prunable_channels / total_channels if total_channels else 0.0
    print(f"\n{analyzed}/{len(names)} models analyzed; prunable share of all conv/linear output channels: {share:.1%}")


if __name__ == "__main__":
    main()
