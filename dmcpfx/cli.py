"""The ``dmcpfx`` command line: ``dmcpfx analyze MODEL [--input-shape 1,3,224,224]``.

Bad input ends with a one-line ``error: ...`` message and exit code 2, never a
traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .errors import DmcpfxError


def _cmd_analyze(args) -> int:
    from .analysis import analyze
    from .models import load_model, parse_shape

    model = load_model(args.model).eval()
    shape = parse_shape(args.input_shape)
    start = time.perf_counter()
    graph = analyze(model, torch.randn(*shape), model_name=args.model)
    elapsed = time.perf_counter() - start
    if args.json:
        doc = {
            "model": args.model,
            "input_shape": list(shape),
            "flops": graph.full_flops,
            "params": graph.full_params,
            "prunable_share": graph.prunable_share(),
            "groups": [
                {"id": g.id, "width": g.width, "members": len(g.members), "divisor": g.divisor,
                 "frozen": g.frozen_reasons}
                for g in graph.groups.values() if g.members
            ],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(graph.table())
        print(f"prunable share of conv/linear output channels: {graph.prunable_share():.1%}; analysis took {elapsed:.2f}s")
    return 0


def _cmd_materialize(args) -> int:
    from .counting import count_flops, count_params
    from .fileio import torch_save_atomic
    from .materialize import materialize
    from .models import load_model, parse_shape
    from .onnx_export import export_onnx

    model = load_model(args.model).eval()
    x = torch.randn(*parse_shape(args.input_shape))
    compact = materialize(model, args.arch, x)
    torch_save_atomic(compact, args.output) if args.output.endswith(".pt") else None
    line = (f"MACs {count_flops(model, x) / 1e6:.1f}M -> {count_flops(compact, x) / 1e6:.1f}M, "
            f"params {count_params(model) / 1e6:.2f}M -> {count_params(compact) / 1e6:.2f}M")
    if args.onnx:
        diff = export_onnx(compact, x, args.onnx)
        line += f"; ONNX {args.onnx} matches PyTorch (max abs diff {diff:.2e})"
    print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmcpfx", description="Differentiable Markov Channel Pruning for any traceable PyTorch model.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="print the channel groups of a model", description="Trace a model and print its coupled channel groups (prunable or frozen, with the reason).")
    p.add_argument("model", help="model spec: torchvision:NAME or package.module:factory")
    p.add_argument("--input-shape", default="1,3,224,224", help="example input shape, comma-separated (default 1,3,224,224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_analyze)
    p = sub.add_parser("materialize", help="slice a model to an arch YAML", description="Slice a model's weights to the widths of an arch YAML; write the compact model (.pt) and optionally ONNX.")
    p.add_argument("model", help="model spec: torchvision:NAME or package.module:factory")
    p.add_argument("arch", help="arch YAML (format dmcpfx-arch/1)")
    p.add_argument("--input-shape", default="1,3,224,224", help="example input shape (default 1,3,224,224)")
    p.add_argument("--output", default="compact.pt", help="where to write the compact model (torch.save of the module)")
    p.add_argument("--onnx", default=None, help="also export ONNX here and check it with onnxruntime")
    p.set_defaults(func=_cmd_materialize)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DmcpfxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
