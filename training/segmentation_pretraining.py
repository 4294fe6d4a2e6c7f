"""Segmentation pretraining: teach a from-scratch model's vision tower and pixel decoder to segment named classes.

    python -m training.segmentation_pretraining --version TINY_DIR --dataset_dir DATA --out DIR [--steps N]

PixelLM starts from LLaVA, whose LLM already turns "the red circle" into a hidden state that means
something. A model built from random weights (``python -m model.tiny``) has no such LLM: the hidden
states at its seg tokens barely differ between targets, the decoder cannot tell targets apart, learns
to hedge over every object, and the LLM gets no useful gradient either. This stage breaks that circle
before ``train_ds.py``. On the ``--dataset`` data of ``--dataset_dir`` (read by the training loaders),
the K seg states of each target are replaced by a state computed from its name alone: the LLM's final
norm of the mean input embedding of the name's tokens, the name being a class name (sem_seg) or a
referring expression (refer_seg, which also teaches "leftmost" and "large"). The vision tower, the
decoder-side projector, feature neck, seg codebook, pixel decoder and the input embeddings learn to
segment the named target with the model's own BCE + Dice losses; the LLM's layers are not run. The
result is a PixelLM folder with the same config and tokenizer, the starting point of ``train_ds.py
--version ... --freeze_pixel_decoder``.

Large models do not need this stage (their LLM and CLIP are pretrained); it exists for tiny models.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset.mix import DataArgs, HybridDataset
from dataset.sample import Sample
from model import PixelLMForCausalLM
from model.losses import bce_per_mask, dice_per_mask

from .args import build_parser, flag
from .model_setup import DTYPES, load_base_model, save_model_folder

logger = logging.getLogger(__name__)

TRAINED = ("vision_tower", "out_mm_projector", "image_feature_neck", "seg_codebook", "pixel_decoder")


@dataclass
class PretrainArgs:
    """Flags of the stage (``--version`` must be a PixelLM folder, e.g. ``python -m model.tiny`` output)."""

    version: str = flag("", "PixelLM folder to start from (e.g. python -m model.tiny output)", required=True)
    dataset_dir: str = flag("", "data root holding the --dataset sources", required=True)
    out: str = flag("", "output PixelLM folder (written atomically)", required=True)
    dataset: str = flag("sem_seg", "'||'-joined data types whose target names become prompts: sem_seg (class names), refer_seg (referring expressions)")
    sample_rates: str = flag("1", "relative sampling rate of each --dataset entry")
    sem_seg_data: str = flag("ade20k", "'||'-joined semantic-segmentation sources, as in train_ds.py")
    refer_seg_data: str = flag("refcoco", "'||'-joined referring datasets, as in train_ds.py")
    steps: int = flag(600, "optimizer steps")
    batch_size: int = flag(8, "images per step")
    num_classes_per_sample: int = flag(3, "classes (masks) drawn per image")
    lr: float = flag(1e-3, "peak learning rate (AdamW, linear warmup then cosine decay)")
    warmup_steps: int = flag(50, "linear warmup steps")
    seed: int = flag(0, "seed of the sample order and of the run")
    workers: int = flag(0, "DataLoader workers")
    precision: str = flag("fp32", "dtype of the model during the stage", choices=sorted(DTYPES))
    device: str = flag("cuda" if torch.cuda.is_available() else "cpu", "cpu, cuda, cuda:1, ...")
    vision_tower: str | None = None
    seg_token_num: int | None = None
    image_feature_scale_num: int | None = None
    ce_loss_weight: float | None = None
    dice_loss_weight: float | None = None
    bce_loss_weight: float | None = None


def collate_samples(samples: list[Sample]) -> dict:
    """Images, every target mask and its class name, in sample order.

    -> pixel_values [B, 3, S, S], clip_resize [B, 2], masks (list of N uint8 [H_b, W_b]), names (N),
    image_index [N] long (the image of each mask).
    """
    masks, names, image_index = [], [], []
    for b, sample in enumerate(samples):
        flat_names = [name for question in sample.targets for name in question]
        if len(flat_names) != sample.masks.shape[0]:
            raise ValueError(f"{sample.image_path}: {len(flat_names)} class names for {sample.masks.shape[0]} masks")
        masks += [torch.from_numpy(m) for m in sample.masks]
        names += flat_names
        image_index += [b] * len(flat_names)
    return {
        "pixel_values": torch.stack([s.processed.pixel_values for s in samples]),
        "clip_resize": torch.tensor([s.processed.clip_resize for s in samples], dtype=torch.long),
        "masks": masks,
        "names": names,
        "image_index": torch.tensor(image_index, dtype=torch.long),
    }


def name_states(model: PixelLMForCausalLM, tokenizer, names: list[str]) -> torch.Tensor:
    """The stand-in seg states of each class name: [N, K, H], the LLM's final norm of its mean token embedding."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    means = []
    for name in names:
        ids = tokenizer(name, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"class name {name!r} tokenises to nothing")
        means.append(embed(torch.tensor(ids, device=device)).mean(0))
    final_norm = getattr(model.language_model.get_decoder(), "norm", None)
    if final_norm is None:
        raise TypeError(f"{type(model.language_model).__name__} has no final norm at .model.norm; this stage supports LLaMA-style LLMs")
    states = final_norm(torch.stack(means))
    return states[:, None].expand(-1, model.config.num_seg_tokens, -1)


def mask_loss(model: PixelLMForCausalLM, batch: dict, tokenizer, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """(weighted BCE + Dice over the batch's masks, their mean IoU at logit > 0)."""
    features = model.encode_images(batch["pixel_values"].to(device, dtype), batch["clip_resize"].to(device))
    states = name_states(model, tokenizer, batch["names"])
    sizes = [tuple(m.shape) for m in batch["masks"]]
    logits = model.decode_masks(states, features.select(batch["image_index"].to(device)), sizes)
    cfg = model.config
    losses, ious = [], []
    for pred, gt in zip(logits, batch["masks"]):
        gt = gt.to(device)[None]
        losses.append(cfg.bce_loss_weight * bce_per_mask(pred[None], gt) + cfg.dice_loss_weight * dice_per_mask(pred[None], gt))
        hit, target = pred > 0, gt[0] == 1
        ious.append(float((hit & target).sum()) / max(1, int((hit | target).sum())))
    return torch.cat(losses).mean(), float(np.mean(ious))


def pretrain_segmentation(args: PretrainArgs) -> dict:
    """Run the stage; returns {"steps", "seconds", "train_iou" (mean over the last 50 steps), "out"}."""
    torch.manual_seed(args.seed)
    device, dtype = torch.device(args.device), DTYPES[args.precision]
    model, tokenizer, processor = load_base_model(args)
    model.to(device)
    model.requires_grad_(False)
    params = [p for name in TRAINED for p in getattr(model, name).parameters()]
    params.append(model.get_input_embeddings().weight)
    for p in params:
        p.requires_grad_(True)
    data_args = DataArgs(
        dataset_dir=args.dataset_dir, dataset=args.dataset, sample_rates=args.sample_rates, sem_seg_data=args.sem_seg_data,
        refer_seg_data=args.refer_seg_data,
        num_classes_per_sample=args.num_classes_per_sample, seed=args.seed, samples_per_epoch=args.steps * args.batch_size,
    )
    dataset = HybridDataset(data_args, processor, model.config.num_seg_tokens)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=collate_samples, num_workers=args.workers, drop_last=True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    logger.info("segmentation pretraining of %s on %s (%s, rates %s): %d steps of %d images, lr %g, %s on %s",
                args.version, args.dataset_dir, args.dataset, args.sample_rates, args.steps, args.batch_size, args.lr, args.precision, device)
    model.train()
    started, ious = time.time(), []
    progress = tqdm(loader, total=args.steps, desc="segmentation pretraining", unit="step", dynamic_ncols=True)
    for batch in progress:
        loss, iou = mask_loss(model, batch, tokenizer, device, dtype)
        if not math.isfinite(float(loss)):
            raise FloatingPointError(f"non-finite loss at step {len(ious)}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ious.append(iou)
        progress.set_postfix(loss=f"{float(loss):.3f}", iou=f"{np.mean(ious[-50:]):.3f}")
    progress.close()
    model.requires_grad_(False)
    out = save_model_folder(model, tokenizer, processor, args.out)
    result = {"steps": len(ious), "seconds": round(time.time() - started, 1), "train_iou": float(np.mean(ious[-50:])), "out": str(out)}
    logger.info("wrote %s: %d steps in %.0f s, train IoU over the last 50 steps %.3f", out, result["steps"], result["seconds"], result["train_iou"])
    return result


def parse_args(argv: list[str] | None = None) -> PretrainArgs:
    """The command line -> ``PretrainArgs`` (the model-flag fields that ``load_base_model`` reads keep their None)."""
    parser = build_parser(PretrainArgs, description=__doc__.split("\n\n")[0])
    return PretrainArgs(**vars(parser.parse_args(argv)))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    pretrain_segmentation(parse_args())


if __name__ == "__main__":
    main()
