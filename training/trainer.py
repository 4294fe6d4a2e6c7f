"""The training run behind ``train_ds.py``: build order, the epoch loop, validation, checkpoints.

Build order: process group -> deterministic kernels (``--deterministic``) -> seed -> base model
(``ModelArgs.load``) -> LoRA and trainable groups (``freeze_policy.prepare_trainable``) -> optional ``--weight``
-> DeepSpeed engine -> resume -> data. Each epoch runs ``steps_per_epoch`` optimizer steps of
``grad_accumulation_steps`` micro-batches, then validates every ``--val_dataset``, checkpoints (with the run's
settings) to ``<run>/ckpt_model`` and, when the mean gIoU improved (or with ``--no_eval``), to
``<run>/best_ckpt_model``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import torch
import torch.distributed as torch_dist
from tqdm import tqdm

from dataset.collate import Collator
from dataset.skips import report_skips
from evaluation.evaluate import EvalOptions, evaluate
from evaluation.metrics import format_metrics
from model import PixelLMForCausalLM
from model.modeling_pixellm import base_model_of, model_inputs
from model.precision import dtype_of
from model.tokens import resolve_token_ids

from .args import TrainArgs
from .checkpoint import CKPT_DIR, TrainState, load_checkpoint, read_latest, save_best, save_checkpoint
from .data import build_train_dataset, build_train_loader, build_val_sets
from .determinism import set_deterministic
from .distributed import DistInfo, init_distributed, seed_everything
from .ds_config import build_ds_config
from .freeze_policy import format_trainable, prepare_trainable, trainable_summary
from .run_log import RunLog, set_tag
from .run_settings import settings_record
from .weights import load_state_dict_any, load_trained_weights

logger = logging.getLogger(__name__)

LOSS_NAMES = ("loss", "ce_loss", "bce_loss", "dice_loss", "refine_loss")


def setup_logging(rank: int) -> None:
    """INFO logs of our packages on rank 0, warnings only elsewhere; a root handler unless one exists (e.g. pytest's)."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{rank} %(name)s] %(message)s", datefmt="%H:%M:%S")
    for name in ("training", "evaluation", "dataset", "model"):
        logging.getLogger(name).setLevel(level)


def data_signature(args: TrainArgs, world_size: int) -> dict:
    """The settings that fix the order of training samples (compared on resume)."""
    keys = ("seed", "batch_size", "grad_accumulation_steps", "steps_per_epoch", "dataset", "sample_rates", "dataset_dir")
    return {**{k: getattr(args, k) for k in keys}, "world_size": world_size}


class LossMeter:
    """Mean of each loss term over the micro-batches since the last ``reset``, optionally over all ranks."""

    def __init__(self) -> None:
        self.sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64)
        self.count = 0

    def add(self, out) -> None:
        self.sums += torch.tensor([float(getattr(out, name).detach()) for name in LOSS_NAMES], dtype=torch.float64)
        self.count += 1

    def mean(self, all_ranks: bool) -> dict[str, float]:
        values = torch.cat([self.sums, torch.tensor([float(self.count)], dtype=torch.float64)])
        if all_ranks and torch_dist.is_initialized():
            from deepspeed.accelerator import get_accelerator

            device = get_accelerator().current_device_name()
            values = values.to(device)
            torch_dist.all_reduce(values)
            values = values.cpu()
        count = max(float(values[-1]), 1.0)
        return {name: float(v) / count for name, v in zip(LOSS_NAMES, values[:-1])}

    def reset(self) -> None:
        self.sums.zero_()
        self.count = 0


def validate(model, val_sets: dict, args: TrainArgs, dist: DistInfo, tokenizer, epoch: int | None, global_step: int, log: RunLog) -> dict[str, dict]:
    """Evaluate every validation set; print, log to TensorBoard and metrics.json; returns {name: result}."""
    results = {}
    for name, val_set in val_sets.items():
        jsonl = f"{args.run_dir}/eval/{set_tag(name)}_step{global_step}.jsonl" if args.eval_only else None
        options = EvalOptions(
            batch_size=args.val_batch_size,
            limit=args.val_limit or None,
            max_new_tokens=args.max_new_tokens,
            jsonl_path=jsonl,
            shard=args.zero_stage != 3 or args.eval_only,
            tokenizer=tokenizer,
            workers=args.workers,
            desc=f"val {name}",
        )
        result = evaluate(model, val_set, dist.device, options)
        results[name] = result
        log.validation(name, result, epoch, global_step)
        if dist.is_main:
            logger.info("%s at step %d: %s over %d pairs", name, global_step, format_metrics(result), int(result["pairs"]))
        report_skips(val_set.skip_counter, logger.info if dist.is_main else logger.debug)
    return results


def mean_giou(results: dict[str, dict]) -> float:
    return sum(r["giou"] for r in results.values()) / len(results)


def run_eval_only(args: TrainArgs, dist: DistInfo) -> dict[str, dict]:
    """Evaluate ``--version`` (e.g. a merged folder) on ``--val_dataset`` without training."""
    model, tokenizer, processor = args.load(dtype_of(args.precision))
    model.to(dist.device)
    token_ids = resolve_token_ids(tokenizer, model.config.tokens_per_target)
    val_sets = build_val_sets(args, tokenizer, processor, token_ids, model.config.num_image_tokens)
    log = RunLog(args.run_dir, dist.is_main)
    try:
        results = validate(model, val_sets, args, dist, tokenizer, None, 0, log)
    finally:
        log.close()
    if dist.is_main:
        for name, result in results.items():
            print(f"{name}: {format_metrics(result)} ({int(result['items'])} images, {int(result['pairs'])} pairs)")
        mean_c = sum(r["ciou"] for r in results.values()) / len(results)
        suffix = f" (mean of {len(results)} sets)" if len(results) > 1 else ""
        print(f"gIoU={mean_giou(results):.4f} cIoU={mean_c:.4f}{suffix}", flush=True)
    return results


def build_engine(args: TrainArgs, dist: DistInfo):
    """(engine, tokenizer, processor, model config, trainable parameter names)."""
    model, tokenizer, processor = args.load(dtype_of(args.precision))
    engine, trainable = initialize_engine(model, args, dist)
    return engine, tokenizer, processor, base_model_of(engine.module).config, trainable


def initialize_engine(model: PixelLMForCausalLM, args: TrainArgs, dist: DistInfo):
    """LoRA and the trainable groups, gradient checkpointing, ``--weight``, then ``deepspeed.initialize``.

    Returns (engine, trainable parameter names). ``model`` may sit on the CPU or already on ``dist.device``.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    trainable_model = prepare_trainable(model, args)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if args.weight:
        load_trained_weights(trainable_model, load_state_dict_any(args.weight), args.weight)
    if dist.is_main:
        logger.info(format_trainable(trainable_summary(trainable_model)))
    trainable = [name for name, p in trainable_model.named_parameters() if p.requires_grad]
    config = build_ds_config(args, dist.world_size, get_accelerator().device_name())
    engine, _, _, _ = deepspeed.initialize(
        model=trainable_model,
        model_parameters=[p for p in trainable_model.parameters() if p.requires_grad],
        config=config,
    )
    logger.info(
        "DeepSpeed ZeRO-%d, %s, optimizer %s, micro batch %d x accumulation %d x %d ranks",
        args.zero_stage, args.precision, type(engine.optimizer).__name__, args.batch_size, args.grad_accumulation_steps, dist.world_size,
    )
    return engine, trainable


def resume_state(args: TrainArgs, engine, trainable: list[str], dist: DistInfo) -> TrainState:
    signature = data_signature(args, dist.world_size)
    path = args.resume
    if args.auto_resume and read_latest(f"{args.run_dir}/{CKPT_DIR}") is not None:
        path = f"{args.run_dir}/{CKPT_DIR}"
    if not path:
        if args.auto_resume:
            logger.info("--auto_resume: no checkpoint in %s/%s yet, starting fresh", args.run_dir, CKPT_DIR)
        return TrainState(data_signature=signature)
    state = load_checkpoint(engine, path, trainable, dist)
    if args.deterministic and state.num_threads not in (None, torch.get_num_threads()):
        logger.warning(
            "%s was written with %d intra-op threads, this run has %d: sums split differently, so the result will not be "
            "bit-identical to an unbroken run; resume with OMP_NUM_THREADS=%d", path, state.num_threads, torch.get_num_threads(), state.num_threads,
        )
    if state.data_signature != signature:
        logger.warning("resuming with other data settings (%s -> %s): the sample order differs from the original run", state.data_signature, signature)
        state.data_signature = signature
    return state


def train(args: TrainArgs) -> dict:
    """Run ``train_ds.py``: returns {"global_step", "best_giou", "last": {set: result}}."""
    dist = init_distributed(args.local_rank)
    setup_logging(dist.rank)
    if args.deterministic:
        set_deterministic(dist.device)
    if dist.is_main:
        logger.info("%d rank(s) on %s, backend %s", dist.world_size, dist.device, torch_dist.get_backend())
        logger.info("arguments: %s", dataclasses.asdict(args))
    seed_everything(args.seed)
    if args.eval_only:
        return {"global_step": 0, "last": run_eval_only(args, dist)}

    engine, tokenizer, processor, config, trainable = build_engine(args, dist)
    # Dropout streams differ per rank; model init above used the same seed everywhere.
    seed_everything(args.seed + dist.rank)
    state = resume_state(args, engine, trainable, dist)
    token_ids = resolve_token_ids(tokenizer, config.tokens_per_target)
    collator = Collator(tokenizer, token_ids, config.num_image_tokens, args.model_max_length)
    dataset = build_train_dataset(args, processor, config.tokens_per_target, dist.world_size)
    val_sets = {} if args.no_eval else build_val_sets(args, tokenizer, processor, token_ids, config.num_image_tokens)
    dtype = next(engine.module.parameters()).dtype
    log = RunLog(args.run_dir, dist.is_main)
    settings = settings_record(args, args)
    total_steps = args.epochs * args.steps_per_epoch
    last: dict[str, dict] = {}
    try:
        state.restore_rng()
        while state.global_step < total_steps:
            epoch = state.global_step // args.steps_per_epoch
            train_epoch(args, engine, dataset, collator, state, trainable, settings, epoch, dist, dtype, log)
            report_skips(dataset.skip_counter, logger.info if dist.is_main else logger.debug)
            is_best = args.no_eval
            if val_sets:
                last = validate(engine, val_sets, args, dist, tokenizer, epoch, state.global_step, log)
                is_best = mean_giou(last) > state.best_giou
                if is_best:
                    state.best_giou = mean_giou(last)
            save_checkpoint(engine, f"{args.run_dir}/{CKPT_DIR}", state, trainable, settings, dist)
            if is_best:
                metrics = {"epoch": epoch, **{f"{name}/{k}": v for name, r in last.items() for k, v in r.items()}}
                save_best(engine, args.run_dir, state, trainable, settings, metrics, dist)
    finally:
        log.close()
    return {"global_step": state.global_step, "best_giou": state.best_giou, "last": last}


def train_epoch(
    args: TrainArgs, engine, dataset, collator, state: TrainState, trainable: list[str], settings: dict, epoch: int, dist: DistInfo,
    dtype, log: RunLog,
) -> None:
    """Optimizer steps state.global_step .. epoch_end - 1 of ``epoch``; checkpoints (with the run's ``settings``) every
    ``--save_steps``."""
    epoch_end = (epoch + 1) * args.steps_per_epoch
    loader = build_train_loader(args, dataset, collator, state.global_step, epoch_end, dist.rank, dist.world_size)
    batches = iter(loader)
    engine.train()
    meter = LossMeter()
    epoch_start = epoch * args.steps_per_epoch
    progress = tqdm(
        total=args.steps_per_epoch, initial=state.global_step - epoch_start, desc=f"epoch {epoch}", unit="step",
        disable=not dist.is_main, dynamic_ncols=True,
    )
    try:
        while state.global_step < epoch_end:
            started = time.perf_counter()
            for _ in range(args.grad_accumulation_steps):
                out = engine(**model_inputs(next(batches), dist.device, dtype))
                if not math.isfinite(float(out.loss.detach())):
                    raise FloatingPointError(f"non-finite loss {float(out.loss)} at step {state.global_step}: lower --lr or check the data")
                engine.backward(out.loss)
                engine.step()
                meter.add(out)
            state.global_step += 1
            if engine.global_steps != state.global_step:
                raise RuntimeError(f"DeepSpeed is at step {engine.global_steps}, the loop at {state.global_step}: check gradient_accumulation_steps")
            step_time = time.perf_counter() - started
            lr = engine.get_lr()[0]
            if state.global_step % args.print_freq == 0:
                losses = meter.mean(all_ranks=True)
                meter.reset()
                log.scalars({**{f"train/{k}": v for k, v in losses.items()}, "train/lr": lr, "train/step_time": step_time}, state.global_step)
                progress.set_postfix(loss=f"{losses['loss']:.4f}", ce=f"{losses['ce_loss']:.3f}", dice=f"{losses['dice_loss']:.3f}", lr=f"{lr:.2e}", s_step=f"{step_time:.2f}")
            progress.update(1)
            if args.save_steps and state.global_step % args.save_steps == 0 and state.global_step != epoch_end:
                save_checkpoint(engine, f"{args.run_dir}/{CKPT_DIR}", state, trainable, settings, dist)
    finally:
        progress.close()
