"""The settings of a training run, each declared once (names follow the original ``train_ds.py``).

``ModelArgs`` (what model a run starts from), ``training.freeze_policy.TrainScope`` (what it trains) and
``dataset.mix.DataArgs`` (its data) are the building blocks; ``TrainArgs`` inherits all three and adds the
optimisation, validation and run flags. ``parse_train_args(argv)`` builds the command line from the fields
(``cli``), so the dataclasses are the single list of options, defaults and help texts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from cli import build_parser, flag
from dataset.mix import DataArgs
from model import PixelLMForCausalLM, PixelLMImageProcessor
from model.loading import load_pretrained
from model.precision import PRECISIONS

from .freeze_policy import TrainScope

ZERO_STAGES = (0, 2, 3)
LOSS_WEIGHTS = ("ce_loss_weight", "dice_loss_weight", "bce_loss_weight")


@dataclass
class ModelArgs:
    """The model a run starts from; stored with its checkpoints, so a merge rebuilds the same model."""

    version: str = flag("", "PixelLM model folder to start from (e.g. from `python -m model.tiny`), or a LLaVA-style folder", required=True)
    vision_tower: str | None = flag(None, "CLIP folder for an original-LLaVA --version (default: its config's mm_vision_tower); unused for folders that hold a CLIP", flag="--vision-tower")
    seg_token_num: int | None = flag(None, "seg tokens per target and scale; must match a PixelLM folder (default: the folder's)")
    image_feature_scale_num: int | None = flag(None, "decoder feature levels; must match a PixelLM folder (default: the folder's)")
    ce_loss_weight: float | None = flag(None, "weight of the text cross-entropy (default: the folder's config, 1.0)")
    dice_loss_weight: float | None = flag(None, "weight of the Dice loss (default: the folder's config, 0.5)")
    bce_loss_weight: float | None = flag(None, "weight of the BCE loss (default: the folder's config, 2.0)")

    def load(self, dtype: torch.dtype) -> tuple[PixelLMForCausalLM, PreTrainedTokenizerBase, PixelLMImageProcessor]:
        """The model (in ``dtype``, on the CPU), its tokenizer and image processor (``model.loading.load_pretrained``)."""
        if not self.version:
            raise ValueError("--version is required: a PixelLM model folder (python -m model.tiny --out DIR writes one) or a LLaVA folder")
        overrides = {name: float(getattr(self, name)) for name in LOSS_WEIGHTS if getattr(self, name) is not None}
        return load_pretrained(
            self.version,
            dtype,
            vision_tower=self.vision_tower,
            seg_token_num=self.seg_token_num,
            image_feature_scale_num=self.image_feature_scale_num,
            **overrides,
        )


@dataclass
class OptimArgs:
    """What every training loop needs: batches, learning rate schedule, precision, data workers."""

    batch_size: int = flag(2, "images per micro-batch and rank")
    lr: float = flag(3e-4, "peak learning rate")
    warmup_steps: int = flag(100, "linear warmup steps (then the learning rate decays to 0)")
    precision: str = flag("bf16", "training precision", choices=sorted(PRECISIONS))
    workers: int = flag(4, "DataLoader worker processes per rank")


@dataclass
class TrainArgs(ModelArgs, TrainScope, DataArgs, OptimArgs):
    """Everything ``train_ds.py`` accepts; see docs/training.md for how the options combine."""

    weight: str = flag("", "weights of the LoRA-wrapped model to start from (a checkpoint folder, zero_to_fp32 output or weight file); keys it lacks must be frozen ones")
    gradient_checkpointing: bool = flag(False, "recompute activations in the backward pass (less memory, ~30%% slower)")
    model_max_length: int = flag(512, "maximum tokens per conversation (image tokens included); longer ones are cut between targets")
    # -- optimisation ---------------------------------------------------------------------------------
    epochs: int = flag(10, "training epochs")
    steps_per_epoch: int = flag(500, "optimizer steps per epoch")
    grad_accumulation_steps: int = flag(10, "micro-batches per optimizer step")
    beta1: float = flag(0.9, "AdamW beta1")
    beta2: float = flag(0.95, "AdamW beta2")
    zero_stage: int = flag(2, "DeepSpeed ZeRO stage", choices=ZERO_STAGES)
    ds_config: str = flag("", "base DeepSpeed JSON (default: configs/ds_zero3.json for stage 3, else configs/ds_zero2.json)")
    torch_adam: bool = flag(False, "use torch's AdamW instead of DeepSpeed's fused one (always on with a CPU accelerator)")
    deterministic: bool = flag(False, "deterministic kernels (PyTorch, cuDNN, cuBLAS) and a fixed thread count: runs of the same seed and thread count give bit-identical weights (without it they differ by float noise)")
    # -- validation -----------------------------------------------------------------------------------
    val_dataset: str = flag("ReasonSeg|val", "'||'-joined validation sets, e.g. 'ReasonSeg|val||refcoco|unc|val||MultiReasonSeg|val'")
    val_batch_size: int = flag(1, "images per validation batch and rank")
    val_limit: int = flag(0, "evaluate only the first N items of each validation set (0: all)")
    max_new_tokens: int = flag(512, "generation budget per question for the free-generation (MUSE) sets")
    eval_only: bool = flag(False, "only evaluate --version on --val_dataset and exit")
    no_eval: bool = flag(False, "skip validation after every epoch (every checkpoint is then the best)")
    # -- runs, checkpoints, logging -------------------------------------------------------------------
    exp_name: str = flag("pixellm", "run name: logs and checkpoints go to <log_base_dir>/<exp_name>/")
    log_base_dir: str = flag("./runs", "parent folder of all runs")
    save_steps: int = flag(0, "also checkpoint every N optimizer steps (0: only at the end of each epoch)")
    auto_resume: bool = flag(False, "continue from <run>/ckpt_model when it holds a checkpoint")
    resume: str = flag("", "continue from this DeepSpeed checkpoint folder (or one tag folder inside it)")
    print_freq: int = flag(1, "log the losses to TensorBoard every N optimizer steps")
    local_rank: int = flag(-1, "set by the deepspeed launcher; the LOCAL_RANK environment variable wins")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.log_base_dir, self.exp_name)

    @property
    def val_names(self) -> list[str]:
        return [name for name in self.val_dataset.split("||") if name]

    def validate(self) -> None:
        """Raise ValueError for combinations that cannot work."""
        if not self.version:
            raise ValueError("--version is required: a PixelLM model folder (python -m model.tiny --out DIR writes one)")
        positive = ("epochs", "steps_per_epoch", "batch_size", "grad_accumulation_steps", "val_batch_size", "print_freq", "model_max_length")
        bad = [f"--{name}={getattr(self, name)}" for name in positive if getattr(self, name) < 1]
        if bad:
            raise ValueError(f"{', '.join(bad)}: must be >= 1")
        if self.warmup_steps < 0 or self.save_steps < 0 or self.workers < 0 or self.val_limit < 0:
            raise ValueError("--warmup_steps, --save_steps, --workers and --val_limit must be >= 0")
        self.check()
        if self.eval_only and self.no_eval:
            raise ValueError("--eval_only and --no_eval contradict each other")
        if self.eval_only and not self.val_names:
            raise ValueError("--eval_only needs --val_dataset")
        if self.resume and self.auto_resume:
            raise ValueError("give either --resume PATH or --auto_resume, not both")


DESCRIPTION = "Train PixelLM with DeepSpeed (LoRA on the LLM; projectors, codebook and pixel decoder fully trained)."


def parse_train_args(argv: list[str] | None = None) -> TrainArgs:
    """Parse ``argv`` (default: sys.argv[1:]) into a validated ``TrainArgs``."""
    namespace = build_parser(TrainArgs, DESCRIPTION).parse_args(argv)
    args = TrainArgs(**vars(namespace))
    args.validate()
    return args
