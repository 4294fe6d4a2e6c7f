"""PixelLMConfig: every option that changes what PixelLM builds or computes."""

from __future__ import annotations

from dataclasses import field

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .tokens import PixelLMTokenIds

CLIP_L14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 448,
    "projection_dim": 768,
}


@strict
class PixelLMConfig(PreTrainedConfig):
    r"""
    Configuration of [`PixelLMForCausalLM`].

    vision_config: the CLIP vision tower, with ``image_size`` already the resized input size (448).
    text_config: any causal LM config (LLaMA first).
    seg_token_num: codebook tokens per target and scale (3); K = ``tokens_per_target`` = seg_token_num * image_feature_scale_num.
    image_feature_scale_num: decoder feature levels (2), one per entry of ``vision_feature_layers``.
    vision_feature_layers: CLIP hidden-state indices; the first feeds the LLM and decoder level 0.
    image_token_pool: the LLM sees the first level average-pooled by this factor (32x32 -> 16x16).
    mm_projector_hidden_mult: projector MLP hidden width = mult * H.
    out_dim: pixel decoder width D (256).
    decoder_*: two-way transformer depth, heads, MLP width and cross-attention downsample rate.
    ce/bce/dice_loss_weight, use_refinement_loss: loss = ce_w*CE + bce_w*(BCE + refinement) + dice_w*Dice (model/losses.py).
    no_repeat_target_ngram_size: generation never names a target twice in one answer, a name being this many tokens
        before a seg group (0: off; ``model/target_repeat_ban.py``).
    min_target_confidence: generation withdraws a target whose mask's confidence (mean probability over the pixels
        it claims) is under this (0: off; ``model/target_confidence.py``).
    answer_candidates, candidate_temperature, candidate_min_confidence, candidate_vote_share: generation answers each
        prompt this many times (the greedy answer and the others sampled at the temperature) and keeps the answer
        whose targets (masks at least that confident) the answers agree on: a target named by more than the vote
        share of them counts for an answer, fewer against (1: greedy only; ``model/answer_candidates.py``).
    candidate_add_votes: a kept answer that names a target also gets each target that at least this many of the
        answers name and it does not (0: off; ``model/answer_candidates.py``).
    compat_clip_pos_embed_shift: reproduce the original's CLS/grid shift when resizing CLIP positions.
    compat_fixed_fusion: fixed 1/(2*seg_token_num) token weights and 1/2 scale weights instead of learnable ones.
    image_token_id, im_start_token_id, im_end_token_id, seg_token_ids: ids in the model's tokenizer.
    """

    model_type = "pixellm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=CLIP_L14_336),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    seg_token_num: int = 3
    image_feature_scale_num: int = 2
    vision_feature_layers: list[int] = field(default_factory=lambda: [-2, -11])
    image_token_pool: int = 2
    mm_projector_hidden_mult: int = 2
    out_dim: int = 256
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_attention_downsample: int = 2
    num_mask_tokens: int = 4
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    use_refinement_loss: bool = True
    no_repeat_target_ngram_size: int = 0
    min_target_confidence: float = 0.0
    answer_candidates: int = 1
    candidate_temperature: float = 1.0
    candidate_min_confidence: float = 0.9
    candidate_vote_share: float = 0.4
    candidate_add_votes: int = 0
    compat_clip_pos_embed_shift: bool = False
    compat_fixed_fusion: bool = False
    image_token_id: int | None = None
    im_start_token_id: int | None = None
    im_end_token_id: int | None = None
    seg_token_ids: list[int] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if len(self.vision_feature_layers) != self.image_feature_scale_num:
            raise ValueError(
                f"vision_feature_layers {self.vision_feature_layers} must list one CLIP layer per scale "
                f"(image_feature_scale_num={self.image_feature_scale_num})"
            )
        if self.image_token_pool < 1 or self.vision_grid % self.image_token_pool:
            raise ValueError(
                f"image_token_pool {self.image_token_pool} must be a positive divisor of the vision grid "
                f"({self.vision_grid} patches per side): fix it in config.json"
            )
        if self.no_repeat_target_ngram_size < 0:
            raise ValueError(f"no_repeat_target_ngram_size must be >= 0 (0: off), got {self.no_repeat_target_ngram_size}: fix it in config.json")
        if not 0.0 <= self.min_target_confidence < 1.0:
            raise ValueError(f"min_target_confidence must be in [0, 1) (0: off), got {self.min_target_confidence}: fix it in config.json")
        if self.answer_candidates < 1:
            raise ValueError(f"answer_candidates must be >= 1 (1: greedy only), got {self.answer_candidates}: fix it in config.json")
        if self.candidate_temperature <= 0:
            raise ValueError(f"candidate_temperature must be > 0, got {self.candidate_temperature}: fix it in config.json")
        if not 0.0 <= self.candidate_min_confidence <= 1.0:
            raise ValueError(f"candidate_min_confidence must be in [0, 1], got {self.candidate_min_confidence}: fix it in config.json")
        if not 0.0 <= self.candidate_vote_share <= 1.0:
            raise ValueError(f"candidate_vote_share must be in [0, 1], got {self.candidate_vote_share}: fix it in config.json")
        if not 0 <= self.candidate_add_votes <= self.answer_candidates:
            raise ValueError(
                f"candidate_add_votes must be in [0, answer_candidates={self.answer_candidates}] (0: off), "
                f"got {self.candidate_add_votes}: fix it in config.json"
            )
        if self.seg_token_ids is not None and len(self.seg_token_ids) != self.tokens_per_target:
            raise ValueError(
                f"seg_token_ids has {len(self.seg_token_ids)} ids, expected K = seg_token_num * "
                f"image_feature_scale_num = {self.tokens_per_target}"
            )

    def set_token_ids(self, ids: PixelLMTokenIds) -> None:
        """Record the ids one tokenizer gave the PixelLM tokens (``model.tokens.add_pixellm_tokens``)."""
        if len(ids.seg) != self.tokens_per_target:
            raise ValueError(f"{len(ids.seg)} seg token ids for K = {self.tokens_per_target} tokens per target")
        self.image_token_id, self.im_start_token_id, self.im_end_token_id = ids.image, ids.im_start, ids.im_end
        self.seg_token_ids = list(ids.seg)

    @property
    def tokens_per_target(self) -> int:
        """K: codebook tokens per target."""
        return self.seg_token_num * self.image_feature_scale_num

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size

    @property
    def vision_grid(self) -> int:
        """Patches per side of the vision tower (32 at 448 px / patch 14)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def llm_grid(self) -> int:
        """Image tokens per side seen by the LLM (16)."""
        return self.vision_grid // self.image_token_pool

    @property
    def num_image_tokens(self) -> int:
        """Image embeddings spliced into the LLM sequence per image (256)."""
        return self.llm_grid**2

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's output logits (128 = 4 x vision grid)."""
        return self.vision_grid * 2 ** self.image_feature_scale_num


__all__ = ["PixelLMConfig"]
