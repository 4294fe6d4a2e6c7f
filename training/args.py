"""The flags of ``train_ds.py`` as one dataclass (names follow the original's ``train_ds.py``).

Every field is a flag ``--<name>`` (``vision_tower`` is spelled ``--vision-tower`` as in the original);
booleans are ``store_true`` switches. ``parse_train_args(argv)`` builds the parser from the fields, so
the dataclass is the single list of options, defaults and help texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from dataset.mix import DataArgs
from model.precision import PRECISIONS

ZERO_STAGES = (0, 2, 3)
_DATA_DEFAULTS = DataArgs()


def flag(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field that ``build_parser`` turns into a command-line option."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainArgs:
    """Everything ``train_ds.py`` accepts; see docs/training.md for how the options combine."""

    # -- model ----------------------------------------------------------------------------------------
    version: str = flag("", "PixelLM model folder to start from (e.g. from `python -m model.tiny`), or a LLaVA-style folder with --vision-tower", required=True)
    vision_tower: str | None = flag(None, "CLIP folder for an original-LLaVA --version (default: its config's mm_vision_tower); unused for folders that hold a CLIP", flag="--vision-tower")
    seg_token_num: int | None = flag(None, "seg tokens per target and scale; must match the folder (default: the folder's)")
    image_feature_scale_num: int | None = flag(None, "decoder feature levels; must match the folder (default: the folder's)")
    ce_loss_weight: float | None = flag(None, "weight of the text cross-entropy (default: the folder's config, 1.0)")
    dice_loss_weight: float | None = flag(None, "weight of the Dice loss (default: the folder's config, 0.5)")
    bce_loss_weight: float | None = flag(None, "weight of the BCE loss (default: the folder's config, 2.0)")
    weight: str = flag("", "weights of the LoRA-wrapped model to start from (a checkpoint folder, zero_to_fp32 output or weight file); keys it lacks must be frozen ones")
    # -- LoRA and what is trained ---------------------------------------------------------------------
    lora_r: int = flag(8, "LoRA rank (0 disables LoRA: the LLM's linear layers stay frozen)")
    lora_alpha: int = flag(16, "LoRA alpha")
    lora_dropout: float = flag(0.05, "LoRA dropout")
    lora_target_modules: str = flag("q_proj,v_proj", "comma-separated linear layer names inside the LLM that get LoRA")
    train_vision_tower: bool = flag(False, "also train the CLIP vision tower (for tiny models; frozen by default)")
    freeze_pixel_decoder: bool = flag(False, "keep out_mm_projector, image_feature_neck and pixel_decoder as loaded (e.g. after python -m training.segmentation_pretraining)")
    train_llm: bool = flag(False, "train every LLM weight instead of LoRA (needs --lora_r 0; for LLMs trained from scratch, e.g. tiny models)")
    gradient_checkpointing: bool = flag(False, "recompute activations in the backward pass (less memory, ~30%% slower)")
    # -- data -----------------------------------------------------------------------------------------
    dataset_dir: str = flag(_DATA_DEFAULTS.dataset_dir, "root folder of all datasets")
    dataset: str = flag(_DATA_DEFAULTS.dataset, "'||'-joined data types of the training mixture")
    sample_rates: str = flag(_DATA_DEFAULTS.sample_rates, "comma-separated sampling weights, one per --dataset entry")
    sem_seg_data: str = flag(_DATA_DEFAULTS.sem_seg_data, "'||'-joined semantic segmentation sets")
    refer_seg_data: str = flag(_DATA_DEFAULTS.refer_seg_data, "'||'-joined referring segmentation sets")
    vqa_data: str = flag(_DATA_DEFAULTS.vqa_data, "'||'-joined VQA sets")
    reason_seg_data: str = flag(_DATA_DEFAULTS.reason_seg_data, "ReasonSeg split(s), e.g. 'ReasonSeg|train'")
    multi_reason_seg_data: str = flag(_DATA_DEFAULTS.multi_reason_seg_data, "MUSE split(s), e.g. 'MultiReasonSeg|train'")
    num_classes_per_sample: int = flag(_DATA_DEFAULTS.num_classes_per_sample, "maximum questions per image")
    num_classes_per_question: int = flag(_DATA_DEFAULTS.num_classes_per_question, "maximum targets per question (sem_seg, refer_seg)")
    use_expand_question_list: bool = flag(False, "use the expanded question templates")
    explanatory: float = flag(_DATA_DEFAULTS.explanatory, "probability of an explanatory ReasonSeg answer")
    model_max_length: int = flag(512, "maximum tokens per conversation (image tokens included); longer ones are cut between targets")
    workers: int = flag(4, "DataLoader worker processes per rank")
    # -- optimisation ---------------------------------------------------------------------------------
    epochs: int = flag(10, "training epochs")
    steps_per_epoch: int = flag(500, "optimizer steps per epoch")
    batch_size: int = flag(2, "images per micro-batch and rank")
    grad_accumulation_steps: int = flag(10, "micro-batches per optimizer step")
    lr: float = flag(3e-4, "peak learning rate")
    beta1: float = flag(0.9, "AdamW beta1")
    beta2: float = flag(0.95, "AdamW beta2")
    warmup_steps: int = flag(100, "linear warmup steps of WarmupDecayLR (then linear decay to 0)")
    precision: str = flag("bf16", "training precision", choices=sorted(PRECISIONS))
    zero_stage: int = flag(2, "DeepSpeed ZeRO stage", choices=ZERO_STAGES)
    ds_config: str = flag("", "base DeepSpeed JSON (default: configs/ds_zero3.json for stage 3, else configs/ds_zero2.json)")
    torch_adam: bool = flag(False, "use torch's AdamW instead of DeepSpeed's fused one (always on with a CPU accelerator)")
    seed: int = flag(0, "seed of the data order, LoRA init and dropout")
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

    @property
    def lora_targets(self) -> list[str]:
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]

    def data_args(self) -> DataArgs:
        """The dataset flags as ``dataset.mix.DataArgs``."""
        names = {f.name for f in dataclasses.fields(DataArgs)} & {f.name for f in dataclasses.fields(self)}
        return DataArgs(**{name: getattr(self, name) for name in names})

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
        if self.lora_r < 0:
            raise ValueError(f"--lora_r={self.lora_r}: must be >= 0 (0 disables LoRA)")
        if self.train_llm and self.lora_r:
            raise ValueError(f"--train_llm trains the whole LLM: pass --lora_r 0 with it (got --lora_r {self.lora_r})")
        if self.lora_r and not self.lora_targets:
            raise ValueError("--lora_target_modules is empty: name the LLM linear layers for LoRA, e.g. q_proj,v_proj")
        if self.eval_only and self.no_eval:
            raise ValueError("--eval_only and --no_eval contradict each other")
        if self.eval_only and not self.val_names:
            raise ValueError("--eval_only needs --val_dataset")
        if self.resume and self.auto_resume:
            raise ValueError("give either --resume PATH or --auto_resume, not both")


def build_parser(cls: type = TrainArgs, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the dataclass ``cls`` made with ``flag`` (other fields are not options)."""
    parser = argparse.ArgumentParser(
        description=description or "Train PixelLM with DeepSpeed (LoRA on the LLM; projectors, codebook and pixel decoder fully trained).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        option = meta.get("flag", f"--{f.name}")
        if f.type in ("bool", bool):
            parser.add_argument(option, dest=f.name, action="store_true", help=meta["help"])
            continue
        kind = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}[str(f.type)]
        parser.add_argument(
            option,
            dest=f.name,
            type=kind,
            default=None if meta.get("required") else f.default,
            required=bool(meta.get("required")),
            choices=meta.get("choices"),
            help=meta["help"],
        )
    return parser


def parse_train_args(argv: list[str] | None = None) -> TrainArgs:
    """Parse ``argv`` (default: sys.argv[1:]) into a validated ``TrainArgs``."""
    namespace = build_parser().parse_args(argv)
    args = TrainArgs(**vars(namespace))
    args.validate()
    return args
