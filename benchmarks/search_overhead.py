"""Search overhead: time per DMCP search step vs a plain training step, same model and batch.

Prints one table (seconds per step, images per second, cost relative to plain training):

- ``plain``: the original model, one forward/backward (cross-entropy) and an SGD step;
- ``warm-up step``: one DMCP weight step (max, min and 2 random sub-nets, one SGD step);
- ``arch-phase step``: a weight step with Markov sub-nets + the architecture step
  (gates in expected mode, CE + budget loss, alpha SGD step) -- what every step of
  the second half of a search costs.

Each search step is timed once per ``--modes`` entry: ``masked`` runs the min and random sub-nets
with channel masks (full-width compute), ``sliced`` with physically sliced weights (slimmable
execution, :mod:`dmcpfx.search.slimmable`), ``bucketed`` sliced to ``--slice-buckets`` widths per
gate and masked inside the bucket (the ``slice_buckets`` search option: fewer shapes, for cached
GPU plans). The max net and the architecture step always run at full width. Data are
synthetic (one random batch kept on the device), so the numbers measure compute only; the
sub-net widths are drawn from the same seeded generator in every mode. Examples::

    python benchmarks/search_overhead.py                      # CPU, small ResNet, 32x32
    python benchmarks/search_overhead.py --model resnet50 --size 224 --batch 64 \\
        --amp bf16 --device cuda --steps 50 --channels-last --modes masked,sliced,bucketed
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dmcpfx  # noqa: E402
from dmcpfx.search.budget import parse_target  # noqa: E402
from dmcpfx.fileio import write_text_atomic  # noqa: E402
from dmcpfx.amp import amp_dtype, autocast  # noqa: E402
from dmcpfx.search.step import SearchStep  # noqa: E402
from dmcpfx.training import param_groups  # noqa: E402


def build_model(name: str, num_classes: int) -> torch.nn.Module:
    if name == "small_resnet":
        from examples.models import small_resnet

        return small_resnet(num_classes=num_classes)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step_fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step_fn`` (mean over ``steps`` after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        step_fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def conv_width_costs(channels: int, size: int, batch: int, device: torch.device, steps: int) -> list[str]:
    """Markdown rows: one 3x3 conv ``c -> c`` (forward + backward, ``batch x c x size x size``)
    at each width of the 10% grid of ``channels``, its MACs and its time as shares of the
    full width. On a CPU, oneDNN computes channels in blocks (16 floats with AVX-512), so a
    width costs about what the next multiple of the block costs."""
    def one(c: int) -> float:
        x = torch.randn(batch, c, size, size, device=device, requires_grad=True)
        w = torch.randn(c, c, 3, 3, device=device, requires_grad=True)
        return time_steps(lambda: F.conv2d(x, w, padding=1).sum().backward(), steps, 2, device)

    widths = sorted({max(1, round(channels * k / 10)) for k in range(1, 11)}, reverse=True)
    full = one(channels)
    rows = ["| width | MACs / full | time / full | ms |", "|---:|---:|---:|---:|"]
    for c in widths:
        sec = full if c == channels else one(c)
        rows.append(f"| {c} | {c * c / channels ** 2:.1%} | {sec / full:.1%} | {sec * 1e3:.2f} |")
    return rows


MODES = ("masked", "sliced", "bucketed")


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    wrong = [m for m in modes if m not in MODES]
    if wrong or "masked" not in modes:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)} and must include masked, got {text!r}")
    return [m for m in MODES if m in modes]  # masked first: the baseline of the ratios


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small_resnet", help="small_resnet or a torchvision model name")
    ap.add_argument("--size", type=int, default=32, help="input height = width")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--target", default="0.5", help="budget for the arch step (ratio or MACs)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    ap.add_argument("--modes", default="masked,sliced", type=_modes,
                    help="how the sub-nets run, comma-separated: masked (always), sliced, bucketed")
    ap.add_argument("--slice-buckets", type=int, default=4, metavar="K",
                    help="bucket widths per gate of the bucketed mode (default 4)")
    ap.add_argument("--conv-widths", type=int, default=0, metavar="C",
                    help="also time one 3x3 conv at each width of the 10%% grid of C channels "
                         "(at the input size halved twice, the last stage of the small ResNet)")
    return ap.parse_args(argv)


def plain_stepper(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                  dtype: torch.dtype | None) -> Callable[[], None]:
    """One plain training step of the original model (SGD, the amp of the search)."""
    opt = torch.optim.SGD(param_groups(model, 4e-5), lr=0.01, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def plain_step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    return plain_step


def search_steppers(space: Any, target: float, device: torch.device, amp: str | None,
                    modes: list[str] = ("masked", "sliced"), slice_buckets: int = 4) -> dict[str, SearchStep]:
    """The search step for each of ``modes`` (masked, sliced, bucketed at ``slice_buckets``)."""
    def stepper_for(slimmable: bool, buckets: int = 0) -> SearchStep:
        return SearchStep(
            space,
            weight_optimizer=torch.optim.SGD(param_groups(space.weight_parameters(), 4e-5), lr=0.01, momentum=0.9,
                                             nesterov=True),
            arch_optimizer=torch.optim.SGD(space.arch_parameters(), lr=0.5, momentum=0.9, nesterov=True),
            target=target, device=device, amp=amp, slimmable=slimmable, slice_buckets=buckets,
            generator=torch.Generator().manual_seed(0),
        )
    build = {"masked": lambda: stepper_for(False), "sliced": lambda: stepper_for(True),
             "bucketed": lambda: stepper_for(True, slice_buckets)}
    return {mode: build[mode]() for mode in modes}


def time_search_steps(steppers: dict[str, SearchStep], x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                      device: torch.device) -> tuple[list, dict[str, dict[str, float]]]:
    """Rows ``(step, sub-nets, s/step)`` of the warm-up and arch-phase steps, and the arch-phase
    step's time per phase (s/step) for each mode."""
    def warm_step(stepper: SearchStep) -> None:
        stepper.weight_step(x, y, markov_prob=0.0)

    def arch_step(stepper: SearchStep) -> None:
        stepper.weight_step(x, y, markov_prob=0.5)
        stepper.arch_step(x, y)

    rows, phases = [], {}
    for name, fn in (("warm-up step", warm_step), ("arch-phase step", arch_step)):
        for mode, stepper in steppers.items():
            for _ in range(args.warmup):
                fn(stepper)
            stepper.timings = {}
            rows.append((name, mode, time_steps(lambda: fn(stepper), args.steps, 0, device)))
            if name == "arch-phase step":
                phases[mode] = {k: v / args.steps for k, v in stepper.timings.items()}
            stepper.timings = None
    return rows, phases


def table_lines(args: argparse.Namespace, space: Any, device: torch.device, rows: list,
                phases: dict[str, dict[str, float]], plain: float) -> list[str]:
    lines = [
        f"model={args.model} input={args.batch}x3x{args.size}x{args.size} device={device} amp={args.amp} "
        f"channels_last={args.channels_last} full={space.full_flops / 1e6:.1f} MMACs groups={len(space.groups)} "
        f"torch={torch.__version__} threads={torch.get_num_threads()} steps={args.steps}",
        "",
        "| step | sub-nets | s/step | images/s | x plain |",
        "|---|---|---:|---:|---:|",
    ]
    for name, mode, sec in rows:
        lines.append(f"| {name} | {mode} | {sec:.4f} | {args.batch / sec:.1f} | {sec / plain:.2f} |")
    by = {(n, m): s for n, m, s in rows}
    modes = list(phases)
    for name in ("warm-up step", "arch-phase step"):
        for mode in modes[1:]:
            lines.append(f"{name}: {mode} / masked = {by[(name, mode)] / by[(name, 'masked')]:.2f}")
    lines += ["", "Where the time of one arch-phase step goes (forward + backward of each sub-net; "
              "`random` is both random sub-nets, Markov probability 0.5):", "",
              "| phase | " + " | ".join(f"{m} s | {m} x plain" for m in modes) + " |",
              "|---|" + "---:|---:|" * len(modes)]
    for phase in phases.get(modes[-1], {}) if modes else ():
        cells = [phases[m].get(phase, 0.0) for m in modes]
        lines.append(f"| {phase} | " + " | ".join(f"{c:.4f} | {c / plain:.2f}" for c in cells) + " |")
    if args.conv_widths:
        size = max(1, args.size // 4)
        lines += ["", f"One 3x3 conv, {args.batch}x{args.conv_widths}x{size}x{size}, forward + backward, at the widths "
                  "of a 10% grid (what a sliced sub-net's layer costs):", ""]
        lines += conv_width_costs(args.conv_widths, size, args.batch, device, args.steps)
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, args.num_classes).eval()
    example = (torch.randn(1, 3, args.size, args.size),)
    space = dmcpfx.instrument(copy.deepcopy(model), example)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    space = space.to(device, memory_format=fmt).train()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(args.num_classes, (args.batch,), device=device)
    plain_step = plain_stepper(model, x, y, device, amp_dtype(args.amp))
    steppers = search_steppers(space, parse_target(args.target, space.full_flops), device, args.amp,
                               args.modes, args.slice_buckets)
    for mode in ("sliced", "bucketed"):
        if mode in steppers and not steppers[mode].slimmable:
            print(f"note: {mode} execution unavailable for this model: {steppers[mode].slimmable_reason}")
    plain = time_steps(plain_step, args.steps, args.warmup, device)
    rows, phases = time_search_steps(steppers, x, y, args, device)
    text = "\n".join(table_lines(args, space, device, [("plain", "-", plain)] + rows, phases, plain))
    print(text)
    if args.markdown:
        write_text_atomic(args.markdown, text + "\n")


if __name__ == "__main__":
    main()
