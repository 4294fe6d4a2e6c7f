"""The DeepSpeed config of a run: a base JSON (configs/ds_zero2.json or ds_zero3.json) with the run's flags.

Overridden from the flags: micro batch, gradient accumulation, train batch, AdamW lr/betas (and
``torch_adam``), WarmupDecayLR (total steps = epochs x steps_per_epoch, warmup, peak lr), precision and
the ZeRO stage. Everything else (bucket sizes, clipping, eps, ...) comes from the base file.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from .args import TrainArgs

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIGS = {0: "configs/ds_zero2.json", 2: "configs/ds_zero2.json", 3: "configs/ds_zero3.json"}


def base_config_path(args: TrainArgs) -> Path:
    """The base JSON: ``--ds_config`` or the stage's file in configs/."""
    return Path(args.ds_config) if args.ds_config else REPO_ROOT / BASE_CONFIGS[args.zero_stage]


def load_base_config(path: str | os.PathLike) -> dict:
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"DeepSpeed base config {path} not found: pass --ds_config or restore configs/ds_zero2.json") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"DeepSpeed base config {path} is not valid JSON: {err}") from err
    for key in ("optimizer", "scheduler", "zero_optimization"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"DeepSpeed base config {path} needs a '{key}' object (see configs/ds_zero2.json)")
    return config


def build_ds_config(args: TrainArgs, world_size: int, accelerator: str) -> dict:
    """The config passed to ``deepspeed.initialize``.

    accelerator: ``deepspeed.get_accelerator().device_name()`` ("cuda", "cpu", ...). fp16 is refused on the
    CPU, and the CPU always uses torch's AdamW (DeepSpeed's fused Adam would JIT-compile for minutes).
    """
    if args.precision == "fp16" and accelerator == "cpu":
        raise ValueError("--precision fp16 is not supported on the CPU accelerator: use --precision bf16 or fp32")
    config = copy.deepcopy(load_base_config(base_config_path(args)))
    config["train_micro_batch_size_per_gpu"] = args.batch_size
    config["gradient_accumulation_steps"] = args.grad_accumulation_steps
    config["train_batch_size"] = args.batch_size * args.grad_accumulation_steps * world_size

    optimizer = config["optimizer"]
    if optimizer.get("type", "").lower() not in ("adam", "adamw"):
        raise ValueError(f"the base DeepSpeed config uses optimizer {optimizer.get('type')!r}; train_ds.py expects AdamW")
    params = optimizer.setdefault("params", {})
    params["lr"] = args.lr
    params["betas"] = [args.beta1, args.beta2]
    params["torch_adam"] = bool(args.torch_adam or accelerator == "cpu")

    total_steps = args.epochs * args.steps_per_epoch
    config["scheduler"] = {
        "type": "WarmupDecayLR",
        "params": {
            **config["scheduler"].get("params", {}),
            "total_num_steps": total_steps,
            "warmup_num_steps": min(args.warmup_steps, total_steps),
            "warmup_max_lr": args.lr,
            "warmup_type": "linear",
        },
    }
    config["scheduler"]["params"].setdefault("warmup_min_lr", 0.0)

    config["bf16"] = {**config.get("bf16", {}), "enabled": args.precision == "bf16"}
    config["fp16"] = {**config.get("fp16", {}), "enabled": args.precision == "fp16"}
    config["zero_optimization"] = {**config["zero_optimization"], "stage": args.zero_stage}
    return config
