"""How long a latency table takes, and how well it predicts (issue 20's table figures).

Builds ``dmcpfx.latency_table`` for torchvision's ResNet-50 at 224 px (``divisor=16``) on ONNX
Runtime CPU, batch 16, 2 threads, every candidate pair, 3 timed runs each; then materializes two
uniform archs and compares the table's prediction with the measured latency of the compact model
(the lowest of 3 medians of 7 runs, the same session options). The table is cached in ``--table``.

    .venv/bin/python benchmarks/latency_table_check.py --table /tmp/lt_r50.json
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision

import dmcpfx
from dmcpfx.search.latency_measure import time_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="latency_table_resnet50.json", help="table file (reused when it matches)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    space = dmcpfx.instrument(model, (x,), divisor=16)
    t0 = time.time()
    table = dmcpfx.latency_table(space, "ort-cpu", args.batch, threads=args.threads, runs=3, path=args.table)
    print(f"table: {time.time() - t0:.0f} s, {len(table.layers)} layers, {len(table.grids)} shared grids, "
          f"skipped {len(table.skipped)}", flush=True)
    print(f"full measured {table.full_ms:.1f} ms, layer sum {table.layers_full_ms:.1f} ms, "
          f"fit: {table.overhead_ms:+.2f} ms + {table.calibration:.3f} x the layer sum", flush=True)
    for frac in (0.6, 0.35):
        widths = {g: info.candidates[round(frac * (len(info.candidates) - 1))] for g, info in space.groups.items()}
        compact = dmcpfx.materialize(model, widths, x)
        measured = time_model(compact, (torch.randn(args.batch, 3, 224, 224),), backend="ort-cpu",
                              threads=args.threads, runs=7, rounds=3)
        predicted = table.latency(widths)
        print(f"uniform at {frac:.0%} of the candidate range: MACs {space.flops(widths) / space.full_flops:.1%}, "
              f"predicted {predicted:.1f} ms, measured {measured:.1f} ms, error {predicted / measured - 1:+.1%}")


if __name__ == "__main__":
    main()
