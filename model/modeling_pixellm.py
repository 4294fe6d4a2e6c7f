"""PixelLMForCausalLM: CLIP vision tower + projectors + any causal LM + seg codebook + pixel decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.generation.streamers import BaseStreamer
from transformers.utils import ModelOutput

from .answer_candidates import (
    CandidateAnswer,
    add_targets,
    agreed_additions,
    candidate_tokens,
    choose_candidate,
    expand_rows,
    replay,
)
from .configuration_pixellm import PixelLMConfig
from .conversation import IGNORE_INDEX
from .losses import bce_per_mask, dice_per_mask, refinement_per_mask
from .pixel_decoder import FeatureNeck, PixelDecoder
from .processing_pixellm import postprocess_masks
from .seg_codebook import SegCodebook, SegGroups, find_seg_groups
from .target_confidence import split_by_confidence
from .target_repeat_ban import TargetRepeatBan
from .vision_tower import encode_levels, patch_validity

MODEL_INPUT_KEYS = (
    "pixel_values", "clip_resize", "offset", "input_ids", "labels", "attention_mask", "masks_list", "original_sizes",
)


def model_inputs(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """The ``forward`` arguments of a collated batch on ``device``: every MODEL_INPUT_KEYS entry (None when
    absent), tensors and tensor lists moved, ``pixel_values`` cast to ``dtype``."""
    out = {}
    for key in MODEL_INPUT_KEYS:
        value = batch.get(key)
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=dtype if key == "pixel_values" else None)
        elif isinstance(value, list):
            value = [v.to(device) for v in value]
        out[key] = value
    return out


def base_model_of(model: nn.Module) -> "PixelLMForCausalLM":
    """The PixelLMForCausalLM inside a DeepSpeed engine and/or a peft PeftModel (LoRA layers stay in place), or
    ``model`` itself."""
    from peft import PeftModel

    inner = getattr(model, "module", model)
    if isinstance(inner, PeftModel):
        inner = inner.get_base_model()
    if not isinstance(inner, PixelLMForCausalLM):
        raise TypeError(f"expected a PixelLMForCausalLM (possibly wrapped), got {type(inner).__name__}")
    return inner


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [Q, T] -> position ids [Q, T]: 0, 1, 2, ... from each row's first attended token.

    Left padding gets position 0; every later token counts, right padding included, as the original's LLaMA
    (positions 0..T-1 for an unpadded row) did.
    """
    first = attention_mask.long().argmax(-1, keepdim=True)
    return (torch.arange(attention_mask.shape[1], device=attention_mask.device)[None] - first).clamp(min=0)


def projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear - GELU - Linear (the mm_projector shape)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


@dataclass
class ImageFeatures(ModelOutput):
    """Everything PixelLM computes from a batch of B images, once per image.

    llm_embeds: [B, n_img, H] projected image tokens for the LLM.
    llm_valid: bool [B, n_img], False where the token covers only padding.
    clip_resize: long [B, 2].
    clip_levels: [B, L, g*g, C_vis] the CLIP patch tokens of each decoder level, kept until
        ``PixelLMForCausalLM.add_decoder_features`` turns them into ``decoder_features`` (then None).
    decoder_features: [B, L, D, g, g] neck features of each decoder level; None until a mask is needed.
    """

    llm_embeds: torch.Tensor | None = None
    llm_valid: torch.Tensor | None = None
    clip_resize: torch.Tensor | None = None
    clip_levels: torch.Tensor | None = None
    decoder_features: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> "ImageFeatures":
        """The features of images ``index`` (e.g. one row per conversation)."""
        pick = lambda x: None if x is None else x[index]  # noqa: E731
        return ImageFeatures(
            pick(self.llm_embeds), pick(self.llm_valid), pick(self.clip_resize), pick(self.clip_levels), pick(self.decoder_features)
        )


@dataclass
class PixelLMOutput(ModelOutput):
    """Output of a forward pass.

    loss: total (ce_w*CE + bce_w*(BCE + refine) + dice_w*Dice), when labels or masks are given.
    ce_loss, bce_loss, dice_loss, refine_loss: the unweighted terms.
    logits: [Q, T, V] next-token logits.
    last_hidden_state: [Q, T, H] the LLM's last layer after its final norm (the states seg groups are read from).
    pred_masks: per image, mask logits [N_b, H_b, W_b] at the original size (in seg-group order).
    seg_counts: [Q] targets per sequence.
    """

    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    bce_loss: torch.Tensor | None = None
    dice_loss: torch.Tensor | None = None
    refine_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pred_masks: list[torch.Tensor] | None = None
    seg_counts: torch.Tensor | None = None


@dataclass
class PixelLMGenerateOutput(ModelOutput):
    """Output of ``generate_with_masks`` for Q prompts.

    sequences: per prompt, the generated token ids (without the prompt, up to and including eos).
    seg_groups: per prompt, each seg group of its answer as (positions of its K tokens in ``sequences[q]``,
        well formed), in answer order (``model.seg_codebook.find_seg_groups``); mask n belongs to group n.
    pred_masks: per prompt, mask logits [N_q, H, W] at the original image size, in answer order.
    target_confidence: per prompt, float [N_q] the confidence of each mask (``model.target_confidence``).
    withdrawn_groups: per prompt, the seg groups withdrawn for a confidence under ``min_target_confidence``, as
        (positions of their K tokens in ``sequences[q]``, confidence); they have no mask and are not in ``seg_groups``.
    chosen_candidate: per prompt, which of its ``answer_candidates`` answers was kept (0: the greedy one).
    added_targets: per prompt, how many targets other candidates agreed on were added to the kept answer
        (``candidate_add_votes``); they are its last seg groups.
    """

    sequences: list[list[int]] | None = None
    seg_groups: list[list[tuple[list[int], bool]]] | None = None
    pred_masks: list[torch.Tensor] | None = None
    target_confidence: list[torch.Tensor] | None = None
    withdrawn_groups: list[list[tuple[list[int], float]]] | None = None
    chosen_candidate: list[int] | None = None
    added_targets: list[int] | None = None


class PixelLMPreTrainedModel(PreTrainedModel):
    config_class = PixelLMConfig
    base_model_prefix = "pixellm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["CLIPEncoderLayer", "LlamaDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """Our own modules keep PyTorch's default init; the CLIP and LLM sub-models init themselves."""


class PixelLMForCausalLM(PixelLMPreTrainedModel):
    """LLaVA-style chat LLM whose seg tokens are decoded into masks.

    Sub-modules: ``vision_tower`` (CLIPVisionModel), ``mm_projector`` (level 0 -> LLM tokens),
    ``out_mm_projector`` and ``image_feature_neck`` (every level -> decoder features), ``language_model``
    (any causal LM), ``seg_codebook`` (text_hidden_fcs + fusion) and ``pixel_decoder``.
    """

    def __init__(self, config: PixelLMConfig) -> None:
        super().__init__(config)
        vis, hid = config.vision_config.hidden_size, config.text_config.hidden_size
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.mm_projector = projector(vis, config.mm_projector_hidden_mult * hid, hid)
        self.out_mm_projector = projector(vis, config.mm_projector_hidden_mult * hid, hid)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.image_feature_neck = FeatureNeck(hid, config.out_dim)
        self.seg_codebook = SegCodebook(config)
        self.pixel_decoder = PixelDecoder(config)
        self.post_init()

    # -- embeddings (delegated, so resize_token_embeddings works) --------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def seg_token_ids(self) -> torch.Tensor:
        if self.config.seg_token_ids is None:
            raise ValueError("config.seg_token_ids is unset: build the model with model.tiny or set it from the tokenizer")
        return torch.tensor(self.config.seg_token_ids, dtype=torch.long)

    # -- image side ------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, clip_resize: torch.Tensor, decoder_features: bool = True) -> ImageFeatures:
        """pixel_values [B, 3, S, S], clip_resize [B, 2] -> ImageFeatures (CLIP runs once per image).

        With ``decoder_features=False`` the decoder-side features are left for ``add_decoder_features`` to
        compute when a mask is first needed (answers without a target never need them).
        """
        cfg = self.config
        g, pool = cfg.vision_grid, cfg.image_token_pool
        valid = patch_validity(clip_resize, cfg.image_size, g)
        levels = encode_levels(self.vision_tower, pixel_values, valid, list(cfg.vision_feature_layers))
        b = pixel_values.shape[0]
        grid0 = levels[0].transpose(1, 2).reshape(b, -1, g, g)
        pooled = F.interpolate(grid0.float(), size=(g // pool, g // pool), mode="bilinear", align_corners=False)
        llm_embeds = self.mm_projector(pooled.to(grid0.dtype).flatten(2).transpose(1, 2))
        llm_valid = F.interpolate(valid[:, None].float(), size=(g // pool, g // pool), mode="nearest")[:, 0].flatten(1) > 0
        features = ImageFeatures(llm_embeds, llm_valid, clip_resize, clip_levels=torch.stack(levels, dim=1))
        return self.add_decoder_features(features) if decoder_features else features

    def add_decoder_features(self, features: ImageFeatures) -> ImageFeatures:
        """Fill ``features.decoder_features`` [B, L, D, g, g] from its CLIP levels (once; the levels are then
        dropped) and return ``features``."""
        if features.decoder_features is None:
            b, levels, _, _ = features.clip_levels.shape
            g = self.config.vision_grid
            projected = self.out_mm_projector(features.clip_levels.flatten(0, 1))
            neck = self.image_feature_neck(projected.transpose(1, 2).reshape(b * levels, -1, g, g))
            features.decoder_features = neck.reshape(b, levels, *neck.shape[1:])
            features.clip_levels = None
        return features

    def embed_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: ImageFeatures
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's image tokens into its embeddings; mask the padded image tokens.

        input_ids, attention_mask: [Q, T]; rows: features of each row's image -> (embeds [Q, T, H], mask [Q, T]).
        """
        embeds = self.get_input_embeddings()(input_ids)
        is_image = input_ids == self.config.image_token_id
        per_row = is_image.sum(1)
        if (per_row != 0).any():
            expected = self.config.num_image_tokens
            if not ((per_row == 0) | (per_row == expected)).all():
                raise ValueError(
                    f"each sequence must hold 0 or {expected} <image> tokens (config.num_image_tokens), got "
                    f"{per_row.tolist()}: tokenise prompts with model.conversation.tokenize_conversation"
                )
            has = per_row > 0
            embeds = embeds.clone()
            embeds[is_image] = rows.llm_embeds[has].reshape(-1, embeds.shape[-1]).to(embeds.dtype)
            attention_mask = attention_mask.clone()
            attention_mask[is_image] = rows.llm_valid[has].reshape(-1).to(attention_mask.dtype)
        return embeds, attention_mask

    def _run_llm(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: DynamicCache | None = None,
        last_logits_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (last-layer hidden states [Q, T, H] after the final norm, logits [Q, T, V]; [Q, 1, V] of the last
        position only with ``last_logits_only``, all generation needs: a 7B prompt batch's full logits take GBs)."""
        out = self.language_model.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )
        hidden = out.last_hidden_state
        return hidden, self.get_output_embeddings()(hidden[:, -1:] if last_logits_only else hidden)

    def decode_masks(
        self,
        predicting_states: torch.Tensor,
        features: ImageFeatures,
        sizes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """Decode N targets in one batched decoder call.

        predicting_states: [N, K, H]; features: the image features of each target (N entries, with decoder
        features); sizes: the output size of each target -> list of N logits [H_i, W_i].
        """
        if predicting_states.shape[0] == 0:
            return []
        prompts = self.seg_codebook(predicting_states)
        low_res = self.pixel_decoder(features.decoder_features, prompts.to(features.decoder_features.dtype))
        groups: dict[tuple, list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault((tuple(features.clip_resize[i].tolist()), tuple(size)), []).append(i)
        masks: list[torch.Tensor | None] = [None] * len(sizes)
        for (clip_resize, size), index in groups.items():
            for i, mask in zip(index, postprocess_masks(low_res[index], self.config.image_size, clip_resize, size)):
                masks[i] = mask
        return masks

    # -- shared by forward and generation ------------------------------------------------------------------
    def _prepare(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        clip_resize: torch.Tensor | None,
        offset: torch.Tensor | None,
        image_features: ImageFeatures | None,
    ) -> tuple[ImageFeatures, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (features of the B images, the image of each row [Q], input embeddings [Q, T, H], attention mask
        with the image validity [Q, T], position ids [Q, T])."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_features is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values and clip_resize (or image_features from encode_images)")
            image_features = self.encode_images(pixel_values, clip_resize, decoder_features=False)
        num_images = image_features.llm_embeds.shape[0]
        if offset is None:
            offset = torch.arange(num_images + 1, device=input_ids.device)
        row_image = torch.repeat_interleave(torch.arange(num_images, device=input_ids.device), offset.to(input_ids.device).diff())
        if row_image.numel() != input_ids.shape[0]:
            raise ValueError(f"offset {offset.tolist()} covers {row_image.numel()} rows but input_ids has {input_ids.shape[0]}")
        embeds, mask = self.embed_inputs(input_ids, attention_mask, image_features.select(row_image))
        return image_features, row_image, embeds, mask, position_ids_from_mask(attention_mask)

    def _masks_of_groups(
        self,
        states: torch.Tensor,
        state_positions: torch.Tensor,
        groups: SegGroups,
        features: ImageFeatures,
        row_image: torch.Tensor,
        sizes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """The mask logits [H_b, W_b] of every group, in group order. states [Q, T, H]; state_positions [N, K]:
        where in ``states`` the state predicting each group token is. Decoder features are computed here, once,
        when the first mask needs them."""
        if groups.num_targets == 0:
            return []
        self.add_decoder_features(features)
        target_image = row_image[groups.rows]
        predicting = states[groups.rows[:, None], state_positions]
        return self.decode_masks(predicting, features.select(target_image), [sizes[int(b)] for b in target_image])

    @staticmethod
    def _output_sizes(
        num_images: int, masks_list: list[torch.Tensor] | None, original_sizes: torch.Tensor | None, clip_resize: torch.Tensor
    ) -> list[tuple[int, int]]:
        if masks_list is not None:
            return [tuple(m.shape[-2:]) for m in masks_list]
        source = original_sizes if original_sizes is not None else clip_resize
        return [tuple(int(v) for v in source[b]) for b in range(num_images)]

    @staticmethod
    def _stack_by(masks: list[torch.Tensor], owner: list[int], count: int, sizes: list[tuple[int, int]], like: torch.Tensor) -> list[torch.Tensor]:
        """Masks grouped by their owner (an image or a prompt): ``count`` tensors [N_i, H_i, W_i]."""
        out = []
        for i in range(count):
            mine = [m for m, o in zip(masks, owner) if o == i]
            out.append(torch.stack(mine) if mine else like.new_zeros((0, *sizes[i]), dtype=torch.float32))
        return out

    # -- training / teacher-forced forward ----------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        clip_resize: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masks_list: list[torch.Tensor] | None = None,
        original_sizes: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        **kwargs,
    ) -> PixelLMOutput:
        """Teacher-forced pass over Q sequences of B images.

        input_ids, attention_mask, labels: [Q, T]; pixel_values [B, 3, S, S]; clip_resize [B, 2];
        offset [B + 1] (rows offset[b]:offset[b+1] belong to image b; default one row per image);
        masks_list: B tensors [N_b, H_b, W_b] of 0/1/255 targets; original_sizes [B, 2] (default: the
        mask sizes, else clip_resize). ``image_features`` replaces pixel_values when already encoded.
        """
        features, row_image, embeds, attn, positions = self._prepare(input_ids, attention_mask, pixel_values, clip_resize, offset, image_features)
        hidden, logits = self._run_llm(embeds, attn, positions)
        num_images = features.llm_embeds.shape[0]
        sizes = self._output_sizes(num_images, masks_list, original_sizes, features.clip_resize)
        groups = find_seg_groups(input_ids, self.seg_token_ids, self.config.tokens_per_target)
        masks = self._masks_of_groups(hidden, groups.predicting_positions, groups, features, row_image, sizes)
        pred_masks = self._stack_by(masks, row_image[groups.rows].tolist(), num_images, sizes, hidden)
        out = PixelLMOutput(logits=logits, last_hidden_state=hidden, pred_masks=pred_masks, seg_counts=groups.counts)
        if labels is not None or masks_list is not None:
            self._add_losses(out, logits, labels, pred_masks, masks_list, groups, row_image)
        return out

    def _add_losses(
        self,
        out: PixelLMOutput,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        pred_masks: list[torch.Tensor],
        masks_list: list[torch.Tensor] | None,
        groups: SegGroups,
        row_image: torch.Tensor,
    ) -> None:
        cfg = self.config
        zero = logits.new_zeros((), dtype=torch.float32)
        ce = zero
        if labels is not None:
            ce = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
            )
            if torch.isnan(ce):
                ce = zero
        bce, dice, refine = zero, zero, zero
        if masks_list is not None:
            bce_all, dice_all, refine_all = [], [], []
            for b, (pred, gt) in enumerate(zip(pred_masks, masks_list)):
                if pred.shape[0] != gt.shape[0]:
                    raise ValueError(
                        f"image {b}: the text holds {pred.shape[0]} seg groups but {gt.shape[0]} masks were given; "
                        "masks_list must hold one mask per seg group, in order"
                    )
                if gt.shape[0] == 0:
                    continue
                gt = gt.to(pred.device)
                bce_all.append(bce_per_mask(pred, gt))
                dice_all.append(dice_per_mask(pred, gt))
                if cfg.use_refinement_loss:
                    counts = groups.counts[row_image == b].tolist()
                    refine_all.append(refinement_per_mask(pred, gt, counts))
            if bce_all:
                bce, dice = torch.cat(bce_all).mean(), torch.cat(dice_all).mean()
                if refine_all:
                    refine = torch.cat(refine_all).mean()
        out.ce_loss, out.bce_loss, out.dice_loss, out.refine_loss = ce, bce, dice, refine
        out.loss = cfg.ce_loss_weight * ce + cfg.bce_loss_weight * (bce + refine) + cfg.dice_loss_weight * dice

    # -- inference --------------------------------------------------------------------------------------
    def _allowed_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [Q, V] with the ``<image>`` placeholder at -inf: it only marks where image features go (its
        lm_head row is untrained), so generation never emits it."""
        if self.config.image_token_id is not None:
            logits = logits.clone()
            logits[:, self.config.image_token_id] = float("-inf")
        return logits

    def _decode_tokens(
        self,
        embeds: torch.Tensor,
        attn: torch.Tensor,
        positions: torch.Tensor,
        budgets: torch.Tensor,
        eos: int,
        candidates: int,
        generator: torch.Generator | None,
        use_cache: bool,
        streamer: BaseStreamer | None,
        no_repeat_target_ngram_size: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The token loop of ``generate_with_masks`` over R rows: embeds [R, T, H] (attn, positions [R, T]), one
        budget per row [R] -> (tokens [R, S], the state that predicted each [R, S, H]); a finished row repeats eos.
        With candidates > 1 the rows are each prompt's candidates, the first greedy and the others sampled."""
        rows, device = embeds.shape[0], embeds.device
        cache = DynamicCache() if use_cache else None
        hidden, logits = self._run_llm(embeds, attn, positions, cache, last_logits_only=True)
        last_hidden, next_logits = hidden[:, -1], logits[:, -1]
        steps, predicting = [], []
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        ngram = self.config.no_repeat_target_ngram_size if no_repeat_target_ngram_size is None else no_repeat_target_ngram_size
        ban = TargetRepeatBan(ngram, list(self.config.seg_token_ids), rows) if ngram else None
        while True:
            if ban is not None:
                next_logits = ban.apply(next_logits)
            allowed = self._allowed_logits(next_logits)
            token = allowed.argmax(-1)
            if candidates > 1:
                token = candidate_tokens(allowed, token, candidates, self.config.candidate_temperature, generator)
            token = torch.where(done, torch.full_like(token, eos), token)
            if ban is not None:
                ban.record(token)
            steps.append(token)
            predicting.append(last_hidden)
            if streamer is not None:
                streamer.put(token)
            done |= (token == eos) | (len(steps) >= budgets)
            if done.all():
                break
            step_embed = self.get_input_embeddings()(token[:, None])
            attn = torch.cat([attn, attn.new_ones(rows, 1)], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
            if use_cache:
                hidden, logits = self._run_llm(step_embed, attn, positions[:, -1:], cache)
            else:
                embeds = torch.cat([embeds, step_embed], dim=1)
                hidden, logits = self._run_llm(embeds, attn, positions, last_logits_only=True)
            last_hidden, next_logits = hidden[:, -1], logits[:, -1]
        if streamer is not None:
            streamer.end()
        # predicting[t] is the state that predicted generated token t.
        return torch.stack(steps, dim=1), torch.stack(predicting, dim=1)

    @torch.no_grad()
    def generate_with_masks(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        clip_resize: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        max_new_tokens: int | list[int] = 512,
        eos_token_id: int | None = None,
        use_cache: bool = True,
        streamer: BaseStreamer | None = None,
        no_repeat_target_ngram_size: int | None = None,
        min_target_confidence: float | None = None,
        answer_candidates: int | None = None,
        generator: torch.Generator | None = None,
    ) -> PixelLMGenerateOutput:
        """Greedy generation for Q left-padded prompts, then all their masks in one decoder call.

        input_ids/attention_mask [Q, T] (left padding); images as in ``forward``. ``max_new_tokens`` is one
        budget for every prompt or one per prompt. The hidden state that predicts each generated token is kept as
        it is computed, so seg groups need no second pass, and the LLM runs once per token that is kept:
        prefill, then one step per further token. ``streamer.put(tokens [Q])`` sees each step's tokens (a
        finished prompt's row repeats its eos), ``streamer.end()`` the end of generation.
        ``no_repeat_target_ngram_size`` (default: the config's; 0: off): an answer does not name the same target
        twice, a name being that many tokens before a seg group (``model/target_repeat_ban.py``).
        ``min_target_confidence`` (default: the config's; 0: off): seg groups whose mask is less confident are
        withdrawn (``model/target_confidence.py``).
        ``answer_candidates`` (default: the config's; 1: greedy only): answers per prompt, the greedy one and the
        others sampled (from ``generator``, default one seeded with 0), of which the one whose targets most answers
        share is kept (``model/answer_candidates.py``), with the targets ``candidate_add_votes`` of them agree on added;
        the streamer then sees the kept answers once all are chosen.
        """
        n = self.config.answer_candidates if answer_candidates is None else answer_candidates
        if n < 1:
            raise ValueError(f"answer_candidates must be >= 1 (1: greedy only), got {n}")
        q = input_ids.shape[0]
        budgets = torch.tensor([max_new_tokens] * q if isinstance(max_new_tokens, int) else list(max_new_tokens), device=input_ids.device)
        if budgets.numel() != q or (budgets < 1).any():
            raise ValueError(f"max_new_tokens must be >= 1, one value or one per prompt ({q}), got {max_new_tokens}")
        features, row_image, embeds, attn, positions = self._prepare(input_ids, attention_mask, pixel_values, clip_resize, offset, image_features)
        sizes = self._output_sizes(features.llm_embeds.shape[0], None, original_sizes, features.clip_resize)
        eos = eos_token_id if eos_token_id is not None else self.config.text_config.eos_token_id
        if n > 1:
            embeds, attn, positions, row_image, budgets = (expand_rows(t, n) for t in (embeds, attn, positions, row_image, budgets))
            if generator is None:
                generator = torch.Generator(device=input_ids.device).manual_seed(0)
        tokens, states = self._decode_tokens(embeds, attn, positions, budgets, eos, n, generator, use_cache,
                                             streamer if n == 1 else None, no_repeat_target_ngram_size)
        sequences = []
        for i, budget in enumerate(budgets.tolist()):
            row = tokens[i, :budget].tolist()
            sequences.append(row[: row.index(eos) + 1] if eos in row else row)
        trimmed = torch.full_like(tokens, -1)
        for i, seq in enumerate(sequences):
            trimmed[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        groups = find_seg_groups(trimmed, self.seg_token_ids, self.config.tokens_per_target)
        masks = self._masks_of_groups(states, groups.token_positions, groups, features, row_image, sizes)
        per_row = self._stack_by(masks, groups.rows.tolist(), q * n, [sizes[int(b)] for b in row_image], states)
        chosen, additions = list(range(q)), [[] for _ in range(q)]
        if n > 1:
            cfg = self.config
            for i in range(q):
                own = per_row[i * n : (i + 1) * n]
                c = choose_candidate(own, cfg.candidate_min_confidence, cfg.candidate_vote_share)
                chosen[i] = i * n + c
                additions[i] = agreed_additions(own, c, cfg.candidate_min_confidence, cfg.candidate_add_votes)

        def answer(r: int) -> CandidateAnswer:
            return CandidateAnswer(sequences[r], per_row[r], groups.of_row(r))

        kept = [add_targets(answer(r), [answer(i * n + c) for c in range(n)], additions[i]) if additions[i] else answer(r)
                for i, r in enumerate(chosen)]
        if n > 1 and streamer is not None:
            replay(streamer, [a.sequence for a in kept], eos)
        threshold = self.config.min_target_confidence if min_target_confidence is None else min_target_confidence
        kept_masks, kept_groups, confidence, withdrawn = map(
            list, zip(*(split_by_confidence(a.masks, a.groups, threshold) for a in kept))
        )
        return PixelLMGenerateOutput(
            sequences=[a.sequence for a in kept], seg_groups=kept_groups, pred_masks=kept_masks, target_confidence=confidence,
            withdrawn_groups=withdrawn, chosen_candidate=[r % n for r in chosen], added_targets=[len(a) for a in additions],
        )
