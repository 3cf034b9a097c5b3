"""Prune your own model: point dmcpfx at a ``package.module:factory`` spec.

Any function that returns an ``nn.Module`` which ``torch.fx.symbolic_trace`` can
trace works. This script resolves such a spec the way the CLI does
(:func:`dmcpfx.models.load_model`), builds the model, traces it and prints what
the channel analysis sees. Run from the repo root::

    python examples/custom_model.py                              # dmcpfx.demo_models:custom_net
    python examples/custom_model.py dmcpfx.demo_models:small_resnet
    python examples/custom_model.py mypkg.nets:my_net --num-classes 100

The same spec drives the command line, e.g.::

    dmcpfx analyze dmcpfx.demo_models:custom_net --input-shape 1,3,32,32
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # make ``dmcpfx`` and examples importable as a script
    sys.path.insert(0, str(REPO_ROOT))

from dmcpfx.errors import DmcpfxError  # noqa: E402
from dmcpfx.models import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="dmcpfx.demo_models:custom_net", help="package.module:factory")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--no-analyze", action="store_true", help="only build, trace and print the model")
    args = parser.parse_args(argv)

    try:
        model = load_model(args.spec, num_classes=args.num_classes).eval()
    except DmcpfxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    example = torch.randn(1, 3, args.image_size, args.image_size)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        out = traced(example)
        diff = (out - model(example)).abs().max().item()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.spec}: {type(model).__name__}, {n_params:,} parameters, "
          f"output {tuple(out.shape)}, traced-vs-eager max |diff| {diff:.2e}")
    print(model)
    print("\nfx graph (what dmcpfx analyzes):")
    for node in traced.graph.nodes:
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        print(f"  {node.op:<14} {node.name:<24} {target}")
    if args.no_analyze:
        return 0

    from dmcpfx import analyze

    print("\nchannel groups:")
    print(analyze(model, example, model_name=args.spec).table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
