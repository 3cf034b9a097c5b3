"""The search under torchrun: 2 CPU processes, gloo (DESIGN.md section 10).

The worker script calls :func:`dmcpfx.search.loop.search` exactly as a single process would;
search() picks up torchrun's environment, initialises gloo, shards the digits with a
DistributedSampler and wraps the space in DDP.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import dmcpfx
    from dmcpfx.search.loop import search

    out_dir = sys.argv[1]
    rank = int(os.environ["RANK"])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images[:256], dtype=torch.float32).unsqueeze(1).repeat(1, 3, 1, 1) / 8.0 - 1.0
    y = torch.tensor(d.target[:256], dtype=torch.long)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)

    torch.manual_seed(0)
    space = dmcpfx.instrument(Net().eval(), (torch.randn(1, 3, 8, 8),))
    # rank-dependent run_dir so the test can see which rank wrote files
    result = search(space, loader, target=0.5, epochs=2, run_dir=os.path.join(out_dir, f"run{rank}"),
                    val_loader=val, calib_batches=1, lr=0.1, progress=False, log_interval=2, device="cpu")
    torch.save({
        "alphas": [a.detach().clone() for a in space.arch_parameters()],
        "state": space.state_dict(),
        "steps": result.steps,
        "val": [(h["val_top1"], h["val_loss"]) for h in result.history],
        "world": torch.distributed.get_world_size(),
    }, os.path.join(out_dir, f"out{rank}.pt"))
    """
)


def test_search_under_torchrun_two_cpu_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a GPU machine
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(script), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    out0 = torch.load(tmp_path / "out0.pt", weights_only=True)
    out1 = torch.load(tmp_path / "out1.pt", weights_only=True)
    assert out0["world"] == out1["world"] == 2
    # 256 images / 2 ranks / batch 32 = 4 steps per epoch
    assert out0["steps"] == out1["steps"] == 8
    assert out0["val"] == out1["val"]  # validation summed over ranks
    # alphas moved (one architecture epoch) and are identical on both ranks
    assert any(a.abs().sum() > 0 for a in out0["alphas"])
    for a0, a1 in zip(out0["alphas"], out1["alphas"]):
        assert torch.equal(a0, a1)
    # weights (DDP) and buffers (broadcast after each epoch) agree too
    for k in out0["state"]:
        assert torch.equal(out0["state"][k], out1["state"][k]), k
    # only rank 0 wrote files
    assert (tmp_path / "run0" / "metrics.jsonl").is_file()
    assert (tmp_path / "run0" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run1").exists()
