"""What a run records on rank 0: TensorBoard scalars in ``<run>/`` and validation results in ``<run>/metrics.json``.

TensorBoard tags: ``train/loss``, ``train/ce_loss``, ``train/bce_loss``, ``train/dice_loss``,
``train/refine_loss``, ``train/lr``, ``train/step_time``, ``val/<set>/giou``, ``val/<set>/ciou`` and, where
the set defines them, ``val/<set>/no_target_acc``, ``val/<set>/count_acc``, ``val/<set>/invented_share``,
where ``<set>`` is the ``--val_dataset`` entry with ``|`` written as ``_`` (``ReasonSeg_val``).
``metrics.json`` is a list of records ``{"epoch", "global_step", "set", "giou", "ciou", ...}``, rewritten
atomically after every validation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from evaluation.metrics import TARGET_METRICS

from .checkpoint import write_text_atomic

METRICS_FILE = "metrics.json"


def set_tag(name: str) -> str:
    """The TensorBoard-safe name of a validation set (``refcoco|unc|val`` -> ``refcoco_unc_val``)."""
    return name.replace("|", "_")


class RunLog:
    """TensorBoard writer plus the metrics file; inactive (all calls no-ops) on ranks other than 0."""

    def __init__(self, run_dir: str | os.PathLike, active: bool) -> None:
        self.run_dir = Path(run_dir)
        self.active = active
        self.writer = None
        self.metrics: list[dict] = []
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir))
        path = self.run_dir / METRICS_FILE
        if path.is_file():
            self.metrics = json.loads(path.read_text())

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def validation(self, name: str, result: dict, epoch: int | None, global_step: int) -> None:
        """Log one set's result to TensorBoard and append it to metrics.json (dropping a stale record of the same step)."""
        if not self.active:
            return
        tag = set_tag(name)
        names = ("giou", "ciou", *TARGET_METRICS)
        self.scalars({f"val/{tag}/{name}": result[name] for name in names if result.get(name) is not None}, global_step)
        record = {"epoch": epoch, "global_step": global_step, "set": name, **result}
        self.metrics = [m for m in self.metrics if not (m["set"] == name and m["global_step"] == global_step)]
        self.metrics.append(record)
        write_text_atomic(self.run_dir / METRICS_FILE, json.dumps(self.metrics, indent=2))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
