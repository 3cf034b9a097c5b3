"""dmcpfx.retrain: learning on digits, exact resume, init modes, files, evaluate."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dmcpfx.data import digits_loaders
from dmcpfx.errors import ConfigError
from dmcpfx.accuracy import evaluate
from dmcpfx.product.retrain import RetrainResult, reinitialize, retrain
from dmcpfx.product.retrain_state import CHECKPOINT_NAME, METRICS_NAME
from dmcpfx.demo_models import small_resnet

FAST = dict(lr=0.1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return digits_loaders(image_size=16, train_subset=512, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def tiny():
    """Two steps per epoch: for tests that check plumbing, not learning."""
    return digits_loaders(image_size=16, train_subset=64, batch_size=32, seed=0)


def _model() -> nn.Module:
    torch.manual_seed(123)
    return small_resnet(width=8)


class _CrashingLoader:
    """Wraps a loader; raises after ``crash_at`` batches in total (a simulated kill)."""

    def __init__(self, loader, crash_at: int) -> None:
        self.loader, self.crash_at, self.served = loader, crash_at, 0
        self.sampler = loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.served == self.crash_at:
                raise KeyboardInterrupt("simulated kill")
            self.served += 1
            yield batch


def test_retrain_learns_digits(digits, tmp_path):
    result = retrain(_model(), digits.train, val_loader=digits.val, epochs=3, run_dir=tmp_path, **FAST)
    assert isinstance(result, RetrainResult)
    first, last = result.history[0]["val_top1"], result.history[-1]["val_top1"]
    assert result.top1 == last and last > first
    assert last > 60.0  # chance is 10%; ~94% in practice
    assert result.top5 >= result.top1 and result.loss > 0
    assert result.best_top1 == max(r["val_top1"] for r in result.history)
    assert result.epochs == 3 and [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[-1]["step"] == 3 * len(digits.train)

    lines = (tmp_path / METRICS_NAME).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"lr", "train_loss", "train_top1", "val_top1", "val_top5", "val_loss"} <= set(records[0])
    state = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["epoch"] == 3 and result.checkpoint == tmp_path / CHECKPOINT_NAME
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes left no debris


def test_resume_equals_uninterrupted(tmp_path):
    # augmentation on: the random shifts after the restart must match too
    data = digits_loaders(image_size=16, train_subset=128, batch_size=32, augment=True)
    kwargs = dict(val_loader=data.val, epochs=2, warmup_epochs=1, **FAST)
    full_model = _model()
    full = retrain(full_model, data.train, run_dir=tmp_path / "full", **kwargs)

    steps = len(data.train)
    crashing = _CrashingLoader(data.train, crash_at=steps + steps // 2)  # dies mid epoch 2
    with pytest.raises(KeyboardInterrupt):
        retrain(_model(), crashing, run_dir=tmp_path / "cut", **kwargs)
    saved = torch.load(tmp_path / "cut" / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 1

    resumed_model = _model()
    resumed = retrain(resumed_model, data.train, run_dir=tmp_path / "cut", resume=True, **kwargs)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), name
    for key in ("top1", "top5", "loss"):
        assert getattr(resumed, key) == pytest.approx(getattr(full, key), abs=1e-6)
    assert len(resumed.history) == 2
    assert resumed.history[1]["train_loss"] == pytest.approx(full.history[1]["train_loss"], abs=1e-6)
    lines = (tmp_path / "cut" / METRICS_NAME).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_resume_with_different_hyperparameters_is_refused(tiny, tmp_path):
    retrain(_model(), tiny.train, epochs=1, run_dir=tmp_path, **FAST)
    with pytest.raises(ConfigError, match="epochs"):
        retrain(_model(), tiny.train, epochs=2, run_dir=tmp_path, resume=True, **FAST)
    with pytest.raises(ConfigError, match="run_dir"):
        retrain(_model(), tiny.train, epochs=1, resume=True, **FAST)
    # a finished run resumes to its stored result without training again
    again = retrain(_model(), tiny.train, epochs=1, run_dir=tmp_path, resume=True, **FAST)
    assert again.epochs == 1 and len(again.history) == 1


def test_resume_after_a_world_size_change_follows_the_search_rule(tiny, tmp_path):
    """One rule for search and retrain: a checkpoint of 2 ranks resumes on 1 (re-seeded, not refused)."""
    retrain(_model(), tiny.train, epochs=2, run_dir=tmp_path, **FAST)
    path = tmp_path / CHECKPOINT_NAME
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["world_size"], ckpt["rng"], ckpt["epoch"] = 2, ckpt["rng"] * 2, 1
    ckpt["history"] = ckpt["history"][:1]
    torch.save(ckpt, path)
    resumed = retrain(_model(), tiny.train, epochs=2, run_dir=tmp_path, resume=True, **FAST)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    ckpt["config"]["lr"] = 9.0
    torch.save(ckpt, path)
    with pytest.raises(ConfigError, match=r"cannot resume .*: lr was 9.0, now"):
        retrain(_model(), tiny.train, epochs=2, run_dir=tmp_path, resume=True, **FAST)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("init", ["scratch", "inherit"])
def test_init_modes(tiny, init):
    # lr=1e-30 (lr must be > 0): below float32 resolution for weights near 1 (all were moved by +1),
    # so the optimizer moves no inherited weight and what we see is the initialization alone
    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # make the given weights unlike any fresh initialization
    before = _params(model)
    retrain(model, tiny.train, epochs=1, init=init, progress=False, lr=1e-30, device="cpu")
    after = _params(model)
    same = [k for k in before if torch.equal(before[k], after[k])]
    if init == "inherit":
        assert same == list(before)
    else:
        assert same == []


def test_reinitialize_resets_parameters_and_running_stats():
    model = _model()
    bn = model.bn1
    with torch.no_grad():
        bn.running_mean.fill_(3.0)
        bn.weight.fill_(5.0)
        model.fc.weight.fill_(7.0)
    assert reinitialize(model) == []
    assert torch.all(bn.running_mean == 0) and torch.all(bn.weight == 1)
    assert not torch.any(model.fc.weight == 7.0)

    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.ones(4))
            self.fc = nn.Linear(4, 2)

    assert reinitialize(WithToken()) == ["WithToken"]


def test_bf16_autocast_runs(tiny):
    result = retrain(_model(), tiny.train, val_loader=tiny.val, epochs=1, amp="bf16", **FAST)
    assert 0.0 <= result.top1 <= 100.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs"),
    (dict(epochs=1, warmup_epochs=2), "warmup_epochs"),
    (dict(epochs=1, amp="fp8"), "amp"),
    (dict(epochs=1, momentum=0.0), "momentum"),
    (dict(epochs=1, init="random"), "init"),
])
def test_bad_arguments(tiny, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        retrain(_model(), tiny.train, progress=False, **kwargs)


def test_evaluate_counts_top1_and_top5():
    logits = torch.eye(6) * 10  # sample i predicts class i with certainty
    labels = torch.tensor([0, 1, 2, 3, 5, 0])  # last two wrong in top-1
    loader = [(logits[:3], labels[:3]), (logits[3:], labels[3:])]
    metrics = evaluate(nn.Identity(), loader, "cpu")
    assert metrics["top1"] == pytest.approx(100 * 4 / 6)
    # every wrong class ties at 0; top-5 of 6 classes holds the label except when it ranks 6th
    assert 100 * 4 / 6 <= metrics["top5"] <= 100.0
    assert metrics["loss"] > 0
    model = nn.Linear(2, 3)
    model.train()
    evaluate(model, [(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))])
    assert model.training  # mode restored


_DDP_SCRIPT = '''
import json, sys
import torch
torch.set_num_threads(1)
from dmcpfx.training import distributed_context
from dmcpfx.data import digits_loaders
from dmcpfx.product.retrain import retrain
from dmcpfx.demo_models import small_resnet
ctx = distributed_context()
bundle = digits_loaders(image_size=16, train_subset=512, batch_size=16, distributed=True)
torch.manual_seed(123)
result = retrain(small_resnet(width=8), bundle.train, val_loader=bundle.val, epochs=3,
                 run_dir=sys.argv[1], progress=False, device="cpu")
print("RESULT", ctx.rank, json.dumps([r["val_top1"] for r in result.history]), flush=True)
torch.distributed.destroy_process_group()
'''


@pytest.mark.slow
def test_ddp_two_processes_agree(tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks see the same global metrics; rank 0 writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp_retrain.py"
    script.write_text(_DDP_SCRIPT)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, env=env, cwd=repo,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            _, rank, history = line.split(" ", 2)
            results[int(rank)] = json.loads(history)
    assert set(results) == {0, 1} and results[0] == results[1]
    assert results[0][-1] > 50.0  # ~95% in practice
    records = [json.loads(x) for x in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    assert [r["val_top1"] for r in records] == results[0]
    assert (tmp_path / "run" / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("amp", ["bf16", "bfloat16", "fp16", "float16"])
def test_amp_spellings_agree_between_search_and_retrain(amp):
    """A config accepts every amp spelling of the search for retrain too; anything else names the key."""
    from dmcpfx.config import Config, apply_overrides
    from dmcpfx.config_checks import validate_config

    validate_config(apply_overrides(Config(), [f"search.amp={amp}", f"retrain.amp={amp}"]))
    with pytest.raises(ConfigError, match="retrain.amp"):
        validate_config(apply_overrides(Config(), ["retrain.amp=half"]))
