"""The ``dmcpfx`` command line: ``analyze``, ``materialize``, ``search``, ``retrain``, ``demo``,
``import-mmrazor`` (``dmcpfx COMMAND --help`` for each).

Bad input ends with a one-line ``error: ...`` message and exit code 2, never a
traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .errors import DmcpfxError, one_line


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


OUTPUT_SUFFIXES = (".pt", ".pth", ".onnx")


def _cmd_materialize(args) -> int:
    from pathlib import Path

    from .arch import check_arch_model, load_arch
    from .counting import count_flops, count_params
    from .errors import ConfigError
    from .materialize import materialize
    from .models import load_model, parse_shape
    from .product.onnx_export import export_onnx
    from .fileio import staged
    from .product.run_dir import save_weights

    suffix = Path(args.output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--output {args.output!r}: the suffix must be .pt or .pth (a state dict) or .onnx, "
                          f"got {suffix or 'none'!r}")
    if args.onnx and Path(args.onnx).suffix.lower() != ".onnx":
        raise ConfigError(f"--onnx {args.onnx!r}: the file name must end in .onnx")
    shape = parse_shape(args.input_shape)
    check_arch_model(load_arch(args.arch), args.model)  # a bad or foreign arch file fails before the model is built
    model = load_model(args.model).eval()
    x = torch.randn(*shape)
    compact = materialize(model, args.arch, x)
    line = (f"MACs {count_flops(model, x) / 1e6:.1f}M -> {count_flops(compact, x) / 1e6:.1f}M, "
            f"params {count_params(model) / 1e6:.2f}M -> {count_params(compact) / 1e6:.2f}M")
    written = []
    with staged([args.output] + ([args.onnx] if args.onnx else [])) as tmps:  # every output, or none
        for path, tmp in tmps.items():
            if Path(path).suffix.lower() == ".onnx":
                diff = export_onnx(compact, x, tmp)
                written.append(f"{path} (ONNX, dynamic batch, matches PyTorch: max abs diff {diff:.2e})")
            else:
                save_weights(compact, tmp)
                written.append(f"{path} (state dict; dmcpfx.load({args.model!r}, {args.arch!r}, {path!r}))")
    print(line + "; wrote " + ", ".join(written))
    return 0


def _load_cfg(args):
    from pathlib import Path

    from .config import load_config

    cfg = load_config(args.config, args.overrides or [])
    if args.run_dir:
        run_dir = Path(args.run_dir)
        cfg.run.dir, cfg.run.name = str(run_dir.parent), run_dir.name
    return cfg


def _run_stages(args, stages) -> int:
    from .pipeline import run_pipeline

    result = run_pipeline(_load_cfg(args), stages)
    from .training import distributed_context

    if not distributed_context(init=False).is_main:
        return 0
    s = result.summary
    if result.table:
        print(result.table)
    elif "pruned_macs" in s:
        budget = (f"target {s['target_macs'] / 1e6:.2f}M" if "target_macs" in s else
                  f"table latency {s['pruned_latency_ms']:.3f} ms, target {s['target_latency_ms']:.3f} ms"
                  if "target_latency_ms" in s else f"params {s['pruned_params']:,}")
        print(f"derived arch: {s['pruned_macs'] / 1e6:.2f}M MACs of {s['full_macs'] / 1e6:.2f}M "
              f"({budget}); arch.yaml and supernet_slice.pt written")
    done = "report.md written" if result.table else "next: `dmcpfx retrain` with the same config"
    print(f"run directory: {result.run_dir} ({done}; {result.seconds:.0f}s)")
    return 0


def _cmd_search(args) -> int:
    return _run_stages(args, ("analyze", "search", "derive", "materialize"))


def _cmd_retrain(args) -> int:
    return _run_stages(args, ("retrain", "report"))


def _cmd_demo(args) -> int:
    from .pipeline import STAGES

    return _run_stages(args, STAGES)


def _cmd_import_mmrazor(args) -> int:
    from .product.mmrazor import import_mmrazor

    widths = import_mmrazor(args.file, args.output, input_shape=args.input_shape)
    print(f"wrote {args.output}: {len(widths)} groups from {args.file}")
    return 0


def _add_run_args(p: argparse.ArgumentParser, config_required: bool) -> None:
    p.add_argument("--config", required=config_required, default=None,
                   help="run config YAML (sections model, data, search, derive, retrain, run)"
                        + ("" if config_required else "; default: the digits demo"))
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config key, dotted, YAML value (repeatable), e.g. --set search.epochs=2")
    p.add_argument("--run-dir", default=None,
                   help="the run directory (default: <run.dir>/<run.name>, i.e. runs/<name>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmcpfx", description="Differentiable Markov Channel Pruning for any traceable PyTorch model.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dmcpfx {__version__}")
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
    p.add_argument("--output", default="compact.pt",
                   help="where to write the compact model: .pt/.pth = its state dict (rebuild it with "
                        "dmcpfx.load(spec, arch, file)), .onnx = ONNX checked with onnxruntime")
    p.add_argument("--onnx", default=None, help="also export ONNX here and check it with onnxruntime")
    p.set_defaults(func=_cmd_materialize)
    p = sub.add_parser("search", help="analyze, search, derive and materialize from a config",
                       description="DMCP search from a run config: analyze -> search -> derive (arch.yaml, widths.png) "
                                   "-> materialize (supernet_slice.pt), all in the run directory. "
                                   "Runs data-parallel under torchrun (rank 0 writes).")
    _add_run_args(p, config_required=True)
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser("retrain", help="retrain the compact model of a searched run and write report.md",
                       description="Retrain the compact model of arch.yaml (init scratch, or inherit "
                                   "supernet_slice.pt), write compact.pt (state dict), compact.onnx and report.md. "
                                   "Use the config given to `dmcpfx search`. Runs data-parallel under torchrun.")
    _add_run_args(p, config_required=True)
    p.set_defaults(func=_cmd_retrain)
    p = sub.add_parser("demo", help="the whole pipeline on the bundled digits (a few minutes on CPU)",
                       description="analyze -> search (50% MACs) -> derive -> materialize -> retrain -> report on "
                                   "scikit-learn's digits with dmcpfx.demo_models:small_resnet at 32x32; prints the "
                                   "report table and the run directory (default runs/digits_demo).")
    _add_run_args(p, config_required=False)
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("import-mmrazor", help="convert an MMRazor DMCP ResNet-50 arch file to an arch YAML",
                       description="Convert MMRazor's DMCP ResNet-50 subnet file ({unit_index: channels} YAML/JSON, "
                                   "or its DMCPChannelMutator JSON with per-unit 'choice') into a dmcpfx arch YAML "
                                   "for torchvision:resnet50.")
    p.add_argument("file", help="the MMRazor file (e.g. DMCP_R50_2G.yaml)")
    p.add_argument("--output", default="arch.yaml", help="where to write the arch YAML (default arch.yaml)")
    p.add_argument("--input-shape", default="1,3,224,224", help="input shape the MACs are counted at (default 1,3,224,224)")
    p.set_defaults(func=_cmd_import_mmrazor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); every file written so far is complete (rerun with --set run.resume=true "
              "to continue a search or retrain)", file=sys.stderr)
        return 130
    except (DmcpfxError, OSError, ValueError, MemoryError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
