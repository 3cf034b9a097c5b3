"""The DMCP latency arm of benchmarks/accuracy.py (issue 20: the accuracy cost of a latency budget).

For each MACs target ``t`` the arm searches with ``budget_metric: latency`` at the latency that
the table predicts for the uniform arm of ``t`` (as a share of the unpruned model's), derives
``expected`` on the table's latency, and trains the result with both protocols. So DMCP latency
and uniform ``t`` have the same speed by the table, and only the architecture differs. The table
is measured once per run (``dmcpfx.latency_table`` on the unpruned model's search space, on
``--latency-arm``'s backend at ``--latency-batch`` images and ``--threads`` threads) and kept in
``--seed-dir``.

A seed saved without the arm gets it added (:func:`add_latency_arm`): the arm reads only the
uniform arm's widths from the saved seed, and its search and training are seeded by the seed
alone, so adding it later gives what a run with the arm from the start gives.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

import dmcpfx
from accuracy_arms import dmcp_search, fresh_model, make_data, record_arm, train_arm
from accuracy_report import Arm
from dmcpfx.search.holdout import split_holdout
from dmcpfx.search.latency_build import load_table

#: settings that only add the latency arm: a seed saved without them is completed, not refused
ADDON_SETTINGS = ("latency", "latency_batch")


def latency_share(table_path: str, widths: Mapping[str, int]) -> float:
    """The table's predicted latency at ``widths`` over its prediction for the unpruned model."""
    table = load_table(table_path)
    return table.latency(widths) / table.latency({})


def measure_latency_table(s: Any, seed_dir: Path | None) -> Path:
    """The latency table of the unpruned model's search space (reused from ``seed_dir`` when it
    was measured the same way there)."""
    folder = seed_dir if seed_dir is not None else Path(tempfile.mkdtemp(prefix="dmcpfx_accuracy_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"latency_table_{s.latency}_b{s.latency_batch}_t{s.threads}.json"
    x = torch.randn(1, 3, s.image_size, s.image_size)
    space = dmcpfx.instrument(fresh_model(s, 0), (x,))
    dmcpfx.latency_table(space, s.latency, s.latency_batch, threads=s.threads, path=path)
    return path


def latency_arm(s: Any, data: Any, search_train: Any, holdout: Any, seed: int, target: float, x: torch.Tensor,
                uniform: Mapping[str, int], log: Callable[[str], None]) -> tuple[str, torch.nn.Module]:
    """``("dmcp_lat", compact)``: DMCP searched and derived at the predicted latency of the uniform
    arm's widths ``uniform`` (``{group id: channels}``)."""
    t0 = time.perf_counter()
    ids = list(uniform)
    # a table of microsecond timings (the smoke run) can put a thinner net above the full one
    budget = min(latency_share(s.latency_table, uniform), 0.99)
    out = dmcp_search(s, data, search_train, holdout, seed, budget, x, budget_metric="latency",
                      latency_table=s.latency_table)
    widths = {g: int(out.expected.get_submodule(g).out_channels) for g in ids}
    log(f"latency search at {budget:.1%} of the full latency (uniform {target:.0%} MACs): derived "
        f"{latency_share(s.latency_table, widths):.1%} ({time.perf_counter() - t0:.0f}s)")
    return "dmcp_lat", out.expected


def add_latency_arm(s: Any, seed: int, res: dict[str, Any]) -> dict[str, Any]:
    """``res`` (a saved seed without the latency arm) with the arm added and every pruned arm's
    predicted latency filled in; the settings record gains the latency settings."""
    torch.set_num_threads(s.threads)
    data = make_data(s)
    x = torch.randn(1, 3, s.image_size, s.image_size)
    space = dmcpfx.instrument(fresh_model(s, 0), (x,))
    ids = list(space.groups)
    log = lambda m: print(f"seed {seed}: {m}", flush=True)  # noqa: E731
    search_train, holdout = split_holdout(data.train, s.holdout, seed=s.data_seed)
    arms = res["arms"]
    for target in s.targets:
        uniform = next(a for a in arms if a["kind"] == "uniform" and a["target"] == target)
        kind, compact = latency_arm(s, data, search_train, holdout, seed, target, x,
                                    dict(zip(ids, uniform["widths"][0])), log)
        arm = Arm(kind, target)
        record_arm(arm, compact, x, ids)
        train_arm(arm, compact, data, s, seed, int(space.full_flops), log)
        arms.append(dataclasses.asdict(arm))
    for arm in arms:
        if arm["target"] is not None:
            arm["latency"] = [latency_share(s.latency_table, dict(zip(ids, w))) for w in arm["widths"]]
    res["settings"] = {**res["settings"], **{k: getattr(s, k) for k in ADDON_SETTINGS}}
    return res
