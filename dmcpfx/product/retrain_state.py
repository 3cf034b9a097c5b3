"""The retrain run's files: the checkpoint's name and format tag, and the metrics file's name
(the checkpoint is written and resumed by :class:`dmcpfx.harness.RunFiles`, as the search's is)."""
from __future__ import annotations

CHECKPOINT_NAME = "retrain_checkpoint.pt"
METRICS_NAME = "retrain_metrics.jsonl"
CHECKPOINT_FORMAT = "dmcpfx-retrain/1"
