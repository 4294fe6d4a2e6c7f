"""Segmentation pretraining: teach a from-scratch model's vision tower and pixel decoder to segment named classes.

    python -m demo.segmentation_pretraining --version TINY_DIR --dataset_dir DATA --out DIR --dataset sem_seg||refer_seg \
        --sem_seg_data ade20k --refer_seg_data refcoco --sample_rates 1,3 [--vision_steps N] [--focus_steps N --focus_words W,...] [--steps N]

PixelLM starts from LLaVA, whose CLIP already sees shapes and whose LLM already turns "the red circle"
into a hidden state that means something. A model built from random weights (``python -m model.tiny``)
has neither: the hidden states at its seg tokens barely differ between targets, the decoder cannot tell
targets apart, learns to hedge over every object, and the LLM gets no useful gradient either. This stage
breaks that circle before ``train_ds.py``, in up to three phases on the data of ``--dataset_dir`` (read by the
training loaders):

1. vision (``--vision_steps``): on the ``--sem_seg_data`` label maps, each patch's first-level decoder
   feature is classified among the class names of the batch (``patch_class_loss``). Colour is easy to
   learn from masks; shape is not, because most targets already differ from the other objects of their
   image by colour. Here "red circle" competes with "red star" of other images, so the vision tower
   learns shape (docs/training.md gives the measured effect).
2. focus (``--focus_steps``, optional): phase 3's losses on only the referring expressions that contain one
   of ``--focus_words``. A decoder trained on the whole mix learns "the red circle" but not "the leftmost
   circle", which needs the extreme of a set; with a few hundred steps on such expressions alone first, the
   mixed phase goes on to learn them (docs/training.md).
3. segmentation (``--steps``): on the ``--dataset`` data, the K seg states of each target are replaced
   by a state computed from its name alone: the LLM's final norm of the mean input embedding of the
   name's tokens, the name being a class name (sem_seg) or a referring expression (refer_seg: by colour,
   kind, size and position). The vision tower, the decoder-side projector, feature neck, seg codebook,
   pixel decoder and the input embeddings learn to segment the named target with the model's
   own BCE + Dice losses (plus the patch loss, ``--patch_class_loss_weight``); the LLM's layers are not run.

In every phase ``--patch_position_loss_weight`` also asks the vision tower to keep where each patch is
(``patch_position_loss``), which masks alone do not.

The result is a PixelLM folder with the same config and tokenizer, the starting point of ``train_ds.py
--version ... --freeze_pixel_decoder``.

Large models do not need this stage (their LLM and CLIP are pretrained); it exists for tiny models, which is
why it lives beside the demo rather than in ``training/``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cli import build_parser, flag
from dataset.mix import DataArgs, HybridDataset
from dataset.sample import Sample
from model import PixelLMForCausalLM
from model.conversation import IGNORE_INDEX
from model.losses import bce_per_mask, dice_per_mask
from model.model_folder import save_model_folder
from model.modeling_pixellm import ImageFeatures
from model.precision import dtype_of
from model.vision_tower import patch_validity
from training.args import ModelArgs, OptimArgs
from training.run_log import RunLog

logger = logging.getLogger(__name__)

TRAINED = ("vision_tower", "out_mm_projector", "image_feature_neck", "seg_codebook", "pixel_decoder")
VISION_TRAINED = ("vision_tower", "out_mm_projector", "image_feature_neck")


@dataclass
class PretrainArgs(ModelArgs, DataArgs, OptimArgs):
    """Flags of the stage: the model (``--version``, a PixelLM folder such as ``python -m model.tiny`` output), its
    data (``--dataset`` of sem_seg and refer_seg only: their target names become the prompts) and these."""

    out: str = flag("", "output PixelLM folder (written atomically)", required=True)
    vision_steps: int = flag(0, "steps of the first phase: vision tower, decoder-side projector and neck learn to classify the "
                                "patches of --sem_seg_data label maps (the decoder is not run)")
    focus_steps: int = flag(0, "steps of a phase between the two on only the --refer_seg_data expressions that contain one of "
                               "--focus_words: what the mixed phase does not pick up alone (docs/training.md)")
    focus_words: str = flag("", "comma-separated words of the focus phase's expressions, e.g. leftmost,rightmost")
    steps: int = flag(600, "steps of the last phase: everything in TRAINED learns the masks")
    patch_class_loss_weight: float = flag(1.0, "weight of the patch classification loss in the last two phases (0: off)")
    patch_position_loss_weight: float = flag(0.0, "weight of the patch position loss in every phase (0: off): each patch's CLIP feature at the "
                                                  "LLM's level must give its row and column through a linear head")
    image_token_loss_weight: float = flag(0.0, "weight of the image-token alignment loss in every phase (0: off): each LLM image token "
                                               "is classified among the batch's class names by its cosine to their input embeddings, "
                                               "and mm_projector learns with it")
    log_dir: str = flag("", "TensorBoard folder for each step's loss, IoU and patch accuracy (tags pretrain/<phase>/<metric>; empty: none)")
    device: str = flag("cuda" if torch.cuda.is_available() else "cpu", "cpu, cuda, cuda:1, ...")

    def validate(self) -> None:
        unsupported = [kind for kind in self.kinds() if kind not in PROMPT_KINDS]
        if unsupported:
            raise ValueError(f"--dataset {self.dataset}: segmentation pretraining reads target names of {PROMPT_KINDS} only, not {unsupported}")
        if self.focus_steps and not self.focus_word_set():
            raise ValueError(f"--focus_steps {self.focus_steps} needs --focus_words: the words whose referring expressions the focus phase reads")

    def focus_word_set(self) -> set[str]:
        return {word.strip().lower() for word in self.focus_words.split(",") if word.strip()}


PROMPT_KINDS = ("sem_seg", "refer_seg")
LABEL_MAP_SOURCES = ("ade20k", "cocostuff", "mapillary")
PATCH_LOGIT_SCALE = 10.0
LOG_EVERY = 10  # steps per TensorBoard point


def patch_labels(sample: Sample, sample_names: list[str], class_names: list[str], grid: int, image_size: int) -> torch.Tensor:
    """[grid, grid] long: the index in ``class_names`` of the class under each patch centre, IGNORE_INDEX elsewhere.

    ``sample_names`` names the sample's masks in order. Only label-map samples (one class per pixel) are
    labelled; a patch over padding, over an unsampled class or over no class is ignored.
    """
    labels = torch.full((grid, grid), IGNORE_INDEX, dtype=torch.long)
    if sample.source not in LABEL_MAP_SOURCES:
        return labels
    height, width = sample.masks.shape[1:]
    resized_h, resized_w = sample.processed.clip_resize
    centres = (np.arange(grid) + 0.5) * image_size / grid
    rows = (centres[centres < resized_h] * height / resized_h).astype(int)
    cols = (centres[centres < resized_w] * width / resized_w).astype(int)
    inside = labels[: len(rows), : len(cols)]
    for mask, name in zip(sample.masks, sample_names):
        inside[torch.from_numpy(mask[np.ix_(rows, cols)] == 1)] = class_names.index(name)
    return labels


def collate_samples(samples: list[Sample], grid: int, llm_grid: int, image_size: int) -> dict:
    """Images, every target mask and its name, in sample order, and the patch labels of label-map samples.

    -> pixel_values [B, 3, S, S], clip_resize [B, 2], masks (list of N uint8 [H_b, W_b]), names (N),
    image_index [N] long (the image of each mask), class_names (U distinct names of label-map samples),
    patch_labels [B, grid, grid] and token_labels [B, llm_grid, llm_grid] long (index into class_names,
    IGNORE_INDEX where unlabelled) for the decoder's patches and the LLM's image tokens.
    """
    per_sample = [[name for question in sample.targets for name in question] for sample in samples]
    masks, names, image_index = [], [], []
    for b, (sample, sample_names) in enumerate(zip(samples, per_sample)):
        if len(sample_names) != sample.masks.shape[0]:
            raise ValueError(f"{sample.image_path}: {len(sample_names)} class names for {sample.masks.shape[0]} masks")
        masks += [torch.from_numpy(m) for m in sample.masks]
        names += sample_names
        image_index += [b] * len(sample_names)
    class_names = sorted({name for s, sample_names in zip(samples, per_sample) if s.source in LABEL_MAP_SOURCES for name in sample_names})
    return {
        "pixel_values": torch.stack([s.processed.pixel_values for s in samples]),
        "clip_resize": torch.tensor([s.processed.clip_resize for s in samples], dtype=torch.long),
        "masks": masks,
        "names": names,
        "image_index": torch.tensor(image_index, dtype=torch.long),
        "class_names": class_names,
        "patch_labels": torch.stack([patch_labels(s, n, class_names, grid, image_size) for s, n in zip(samples, per_sample)]),
        "token_labels": torch.stack([patch_labels(s, n, class_names, llm_grid, image_size) for s, n in zip(samples, per_sample)]),
    }


def keep_expressions_with(data: HybridDataset, words: set[str]) -> None:
    """Keep only the referring expressions of ``data``'s refer_seg sources that contain one of ``words`` (lower case,
    whole words)."""
    refer = next((d for d in data.datasets if d.kind == "refer_seg"), None)
    if refer is None:
        raise ValueError("the focus phase reads referring expressions: its data needs refer_seg (--refer_seg_data)")
    for source in refer.sources:
        source.keep_expressions(lambda e: not words.isdisjoint(e.sentence.lower().split()))
        if not len(source):
            raise ValueError(f"--focus_words {','.join(sorted(words))}: no training expression of {source.name} contains one of them")


def name_embeddings(model: PixelLMForCausalLM, tokenizer, names: list[str]) -> torch.Tensor:
    """The mean input embedding of each name's tokens: [N, H]."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    means = []
    for name in names:
        ids = tokenizer(name, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"class name {name!r} tokenises to nothing")
        means.append(embed(torch.tensor(ids, device=device)).mean(0))
    return torch.stack(means)


def name_states(model: PixelLMForCausalLM, tokenizer, names: list[str]) -> torch.Tensor:
    """The stand-in seg states of each class name: [N, K, H], the LLM's final norm of its mean token embedding."""
    final_norm = getattr(model.language_model.get_decoder(), "norm", None)
    if final_norm is None:
        raise TypeError(f"{type(model.language_model).__name__} has no final norm at .model.norm; this stage supports LLaMA-style LLMs")
    states = final_norm(name_embeddings(model, tokenizer, names))
    return states[:, None].expand(-1, model.config.tokens_per_target, -1)


def mask_loss(model: PixelLMForCausalLM, features: ImageFeatures, batch: dict, tokenizer) -> tuple[torch.Tensor, float]:
    """(weighted BCE + Dice over the batch's masks, their mean IoU at logit > 0) for the images' ``features``."""
    states = name_states(model, tokenizer, batch["names"])
    device = states.device
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


def patch_class_loss(model: PixelLMForCausalLM, key_head: nn.Linear, features: ImageFeatures, batch: dict, tokenizer) -> tuple[torch.Tensor, float]:
    """(cross-entropy of each labelled patch over the batch's class names, its accuracy).

    The first decoder level's feature of a patch [D] is scored against ``key_head`` of each class name's
    state [H -> D] by cosine similarity times PATCH_LOGIT_SCALE. The mask loss alone hardly asks the
    vision tower for shape: most targets differ from the image's other objects by colour already. Here "red circle" competes with "red star" from the
    other images of the batch, so the features must carry shape too. Zero when no patch is labelled.
    """
    labels = batch["patch_labels"].to(features.decoder_features.device).flatten()
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        return features.decoder_features.sum() * 0.0, float("nan")
    keys = F.normalize(key_head(name_states(model, tokenizer, batch["class_names"])[:, 0]), dim=-1)
    patches = F.normalize(features.decoder_features[:, 0].flatten(2).transpose(1, 2).reshape(-1, keys.shape[-1]), dim=-1)
    logits = PATCH_LOGIT_SCALE * patches @ keys.T
    accuracy = float((logits[labelled].argmax(-1) == labels[labelled]).float().mean())
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX), accuracy


def patch_positions(grid: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[grid, grid, 2] float32: each patch centre's (row, column), scaled to [-1, 1]."""
    centres = (torch.arange(grid, device=device, dtype=torch.float32) + 0.5) * 2 / grid - 1
    return torch.stack(torch.meshgrid(centres, centres, indexing="ij"), dim=-1)


def patch_position_loss(position_head: nn.Linear, llm_level: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean squared error of each patch's (row, column) read by ``position_head`` [C_vis -> 2] from its CLIP feature,
    the mean absolute error in patches), over the patches that are not padding.

    llm_level: [B, g*g, C_vis] the CLIP level the LLM's image tokens are projected from; valid: bool [B, g, g].
    A vision tower trained from scratch on masks and classes forgets where a patch is (segmentation does not
    need it), and an LLM that cannot tell where a token lies cannot tie the colour it sees there to the shape it
    sees there (docs/training.md has the measured effect). Positions are scaled to [-1, 1]; the head is linear
    so that they stay linear in the features, where attention can use them.
    """
    g = valid.shape[-1]
    target = patch_positions(g, llm_level.device)[None].expand(len(valid), -1, -1, -1)[valid]
    error = position_head(llm_level[valid.flatten(1)]).float() - target
    return error.pow(2).mean(), float(error.detach().abs().mean()) * g / 2


def image_token_loss(model: PixelLMForCausalLM, features: ImageFeatures, batch: dict, tokenizer) -> tuple[torch.Tensor, float]:
    """(cross-entropy of each labelled LLM image token over the batch's class names, its accuracy).

    A token [H] (``mm_projector`` of the pooled CLIP patch) is scored against the mean input embedding of each
    class name's tokens by cosine similarity times PATCH_LOGIT_SCALE: the image tokens the LLM reads come to lie
    near the words that name what they show, so the LLM can tell which colour goes with which shape. Zero when no
    token is labelled.
    """
    labels = batch["token_labels"].to(features.llm_embeds.device).flatten()
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        return features.llm_embeds.sum() * 0.0, float("nan")
    names = name_embeddings(model, tokenizer, batch["class_names"])
    tokens = F.normalize(features.llm_embeds.reshape(-1, names.shape[-1]), dim=-1)
    logits = PATCH_LOGIT_SCALE * tokens @ F.normalize(names, dim=-1).T
    accuracy = float((logits[labelled].argmax(-1) == labels[labelled]).float().mean())
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX), accuracy


def run_phase(name: str, loader: DataLoader, steps: int, params: list[nn.Parameter], args: PretrainArgs,
              step_loss: Callable[[dict], tuple[torch.Tensor, dict[str, float]]]) -> dict[str, list[float]]:
    """``steps`` AdamW steps (linear warmup, cosine decay) on ``step_loss(batch)``; returns each metric's value per step."""
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    history: dict[str, list[float]] = {}
    progress = tqdm(loader, total=steps, desc=name, unit="step", dynamic_ncols=True)
    for step, batch in enumerate(progress):
        loss, metrics = step_loss(batch)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{name}: non-finite loss at step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        finite = {key: value for key, value in {"loss": loss.item(), **metrics}.items() if math.isfinite(value)}
        for key, value in finite.items():
            history.setdefault(key, []).append(value)
        progress.set_postfix({key: f"{np.mean(values[-50:]):.3f}" for key, values in history.items()})
    progress.close()
    return history


def write_log(log_dir: str, phases: list[tuple[str, dict[str, list[float]]]]) -> None:
    """TensorBoard scalars ``pretrain/<phase>/<metric>``: the mean of every LOG_EVERY steps, phases numbered on."""
    log, first = RunLog(log_dir, active=True), 0
    for phase, history in phases:
        steps = max((len(values) for values in history.values()), default=0)
        for end in range(LOG_EVERY, steps + 1, LOG_EVERY):
            log.scalars({f"pretrain/{phase}/{key}": float(np.mean(values[end - LOG_EVERY : end]))
                         for key, values in history.items() if len(values) >= end}, first + end - 1)
        first += steps
    log.close()


def pretrain_segmentation(args: PretrainArgs) -> dict:
    """Run the stage; returns {"steps", "seconds", "train_iou", "vision_patch_accuracy" (means over the last 50 steps), "out"}.

    With ``--log_dir`` the per-step metrics are written to TensorBoard once the phases are done.
    """
    args.validate()
    torch.manual_seed(args.seed)
    device, dtype = torch.device(args.device), dtype_of(args.precision)
    model, tokenizer, processor = args.load(dtype)
    model.to(device)
    embeddings = model.get_input_embeddings().weight
    # Scores patch features against class names during this stage only; it is not part of the saved model.
    key_head = nn.Linear(model.config.text_config.hidden_size, model.config.out_dim, bias=False).to(device, dtype)
    position_head = nn.Linear(model.config.vision_config.hidden_size, 2).to(device, dtype)  # stage only, like key_head
    collate = functools.partial(collate_samples, grid=model.config.vision_grid, llm_grid=model.config.llm_grid,
                                image_size=model.config.image_size)

    def loader(dataset: str, sample_rates: str, steps: int, words: set[str] | None = None) -> DataLoader:
        """Batches of ``dataset``; with ``words``, refer_seg's expressions that contain none of them are dropped."""
        data_args = dataclasses.replace(args, dataset=dataset, sample_rates=sample_rates)
        data = HybridDataset(data_args, processor, model.config.tokens_per_target, steps * args.batch_size)
        if words:
            keep_expressions_with(data, words)
        return DataLoader(data, batch_size=args.batch_size, shuffle=False, collate_fn=collate, num_workers=args.workers, drop_last=True)

    def features_of(batch: dict) -> tuple[ImageFeatures, torch.Tensor]:
        """The batch's image features and the CLIP level of the LLM's image tokens [B, g*g, C_vis]."""
        features = model.encode_images(batch["pixel_values"].to(device, dtype), batch["clip_resize"].to(device), decoder_features=False)
        llm_level = features.clip_levels[:, 0]
        return model.add_decoder_features(features), llm_level

    def with_shared_losses(loss: torch.Tensor, metrics: dict[str, float], features: ImageFeatures, llm_level: torch.Tensor,
                           batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss`` plus the image-token and patch-position losses where their weights are set."""
        if args.image_token_loss_weight:
            token_loss, metrics["token_acc"] = image_token_loss(model, features, batch, tokenizer)
            loss = loss + args.image_token_loss_weight * token_loss
        if args.patch_position_loss_weight:
            valid = patch_validity(features.clip_resize, model.config.image_size, model.config.vision_grid)
            position_loss, metrics["position_error"] = patch_position_loss(position_head, llm_level, valid)
            loss = loss + args.patch_position_loss_weight * position_loss
        return loss, metrics

    def vision_loss(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        features, llm_level = features_of(batch)
        loss, accuracy = patch_class_loss(model, key_head, features, batch, tokenizer)
        return with_shared_losses(loss, {"patch_acc": accuracy}, features, llm_level, batch)

    def segmentation_loss(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        features, llm_level = features_of(batch)
        loss, iou = mask_loss(model, features, batch, tokenizer)
        metrics = {"iou": iou}
        if args.patch_class_loss_weight:
            class_loss, metrics["patch_acc"] = patch_class_loss(model, key_head, features, batch, tokenizer)
            loss = loss + args.patch_class_loss_weight * class_loss
        return with_shared_losses(loss, metrics, features, llm_level, batch)

    logger.info("segmentation pretraining of %s on %s: %d vision steps (%s), %d segmentation steps (%s, rates %s) of %d images, "
                "lr %g, %s on %s", args.version, args.dataset_dir, args.vision_steps, args.sem_seg_data, args.steps, args.dataset,
                args.sample_rates, args.batch_size, args.lr, args.precision, device)
    model.train()
    started, vision = time.time(), {}
    def trainable(modules: tuple[str, ...]) -> list[nn.Parameter]:
        """Only ``modules`` (and mm_projector with the image-token loss), the input embeddings and the key and
        position heads require gradients; returns them."""
        model.requires_grad_(False)
        modules = (*modules, "mm_projector") if args.image_token_loss_weight else modules
        params = [p for name in modules for p in getattr(model, name).parameters()] + [embeddings, *key_head.parameters(), *position_head.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    if args.vision_steps:
        vision = run_phase("vision pretraining", loader("sem_seg", "1", args.vision_steps), args.vision_steps,
                           trainable(VISION_TRAINED), args, vision_loss)
    focus = {}
    if args.focus_steps:
        focus = run_phase("focus pretraining", loader("refer_seg", "1", args.focus_steps, args.focus_word_set()), args.focus_steps,
                          trainable(TRAINED), args, segmentation_loss)
    segmentation = run_phase("segmentation pretraining", loader(args.dataset, args.sample_rates, args.steps), args.steps,
                             trainable(TRAINED), args, segmentation_loss)
    if args.log_dir:
        write_log(args.log_dir, [("vision", vision), ("focus", focus), ("segmentation", segmentation)])
    model.requires_grad_(False)
    out = save_model_folder(model, tokenizer, processor, args.out)
    result = {"steps": args.vision_steps + args.focus_steps + args.steps, "seconds": round(time.time() - started, 1),
              "train_iou": float(np.mean(segmentation["iou"][-50:])),
              "vision_patch_accuracy": float(np.mean(vision["patch_acc"][-50:])) if vision else float("nan"), "out": str(out)}
    logger.info("wrote %s: %d steps in %.0f s, train IoU over the last 50 steps %.3f, patch accuracy after the vision phase %.3f",
                out, result["steps"], result["seconds"], result["train_iou"], result["vision_patch_accuracy"])
    return result


def parse_args(argv: list[str] | None = None) -> PretrainArgs:
    """The command line -> ``PretrainArgs``."""
    parser = build_parser(PretrainArgs, description=__doc__.split("\n\n")[0])
    return PretrainArgs(**vars(parser.parse_args(argv)))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    pretrain_segmentation(parse_args())


if __name__ == "__main__":
    main()
