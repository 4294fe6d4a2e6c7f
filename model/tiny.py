"""Build a tiny random PixelLM folder locally (no download): config, safetensors weights, tokenizer.

    python -m model.tiny --out DIR [--seed N] [--corpus FILE]

The model is shaped like the real one (two scales, K = 6, padded CLIP input, 2-level decoder) but small
enough for a CPU: a forward+backward of a batch of 4 takes a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .configuration_pixellm import PixelLMConfig
from .model_folder import save_model_folder
from .modeling_pixellm import PixelLMForCausalLM
from .processing_pixellm import PixelLMImageProcessor
from .tiny_tokenizer import train_tiny_tokenizer

TINY_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 64,
}
TINY_TEXT = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TINY_PIXELLM = {
    "seg_token_num": 3,
    "image_feature_scale_num": 2,
    "vision_feature_layers": [-2, -3],
    "out_dim": 64,
    "decoder_depth": 2,
    "decoder_num_heads": 4,
    "decoder_mlp_dim": 256,
    "decoder_attention_downsample": 2,
}

# PixelLMConfig fields that change how a model answers, not what it computes.
DECODING_RULES = ("no_repeat_target_ngram_size", "min_target_confidence", "answer_candidates", "candidate_temperature",
                  "candidate_min_confidence", "candidate_vote_share", "candidate_add_votes")


def build_tiny(out_dir: str | os.PathLike, seed: int = 0, corpus: list[str] | None = None, llm_layers: int | None = None,
               **decoding: float) -> Path:
    """Write a complete tiny random PixelLM folder to ``out_dir`` and return its path (``llm_layers``: the LLM's
    decoder layers, default ``TINY_TEXT``'s; ``decoding``: the config's decoding rules, ``DECODING_RULES``, off
    when not given)."""
    unknown = set(decoding) - set(DECODING_RULES)
    if unknown:
        raise TypeError(f"build_tiny: {sorted(unknown)} are not decoding rules; expected some of {DECODING_RULES}")
    torch.manual_seed(seed)
    text_config = dict(TINY_TEXT, num_hidden_layers=llm_layers or TINY_TEXT["num_hidden_layers"])
    config = PixelLMConfig(vision_config=dict(TINY_VISION), text_config=text_config, **decoding, **TINY_PIXELLM)
    tokenizer, token_ids = train_tiny_tokenizer(corpus or [], config.tokens_per_target, model_max_length=TINY_TEXT["max_position_embeddings"])
    text = config.text_config
    text.vocab_size, text.eos_token_id, text.bos_token_id, text.pad_token_id = (
        len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id,
    )
    config.set_token_ids(token_ids)
    model = PixelLMForCausalLM(config)
    return save_model_folder(model, tokenizer, PixelLMImageProcessor(image_size=config.image_size), out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", help="text file (one text per line) the tokenizer is trained on, e.g. a synthetic world's corpus.txt")
    parser.add_argument("--llm_layers", type=int, help=f"decoder layers of the LLM (default {TINY_TEXT['num_hidden_layers']})")
    parser.add_argument("--no_repeat_target_ngram_size", type=int, default=PixelLMConfig.no_repeat_target_ngram_size,
                        help="generation never names a target twice, a name being this many tokens before a seg group (0: off)")
    parser.add_argument("--min_target_confidence", type=float, default=PixelLMConfig.min_target_confidence,
                        help="generation withdraws a target whose mask is less confident than this (0: off)")
    parser.add_argument("--answer_candidates", type=int, default=PixelLMConfig.answer_candidates,
                        help="generation answers each prompt this many times and keeps the answer whose targets they agree on (1: greedy only)")
    parser.add_argument("--candidate_temperature", type=float, default=PixelLMConfig.candidate_temperature, help="temperature of the sampled answer candidates")
    parser.add_argument("--candidate_min_confidence", type=float, default=PixelLMConfig.candidate_min_confidence,
                        help="mask confidence from which a candidate's mask is a target (weaker ones count against it)")
    parser.add_argument("--candidate_vote_share", type=float, default=PixelLMConfig.candidate_vote_share,
                        help="a target named by more than this share of the candidates counts for an answer, fewer against")
    parser.add_argument("--candidate_add_votes", type=int, default=PixelLMConfig.candidate_add_votes,
                        help="add to a kept answer each target this many candidates name and it does not (0: off)")
    args = parser.parse_args()
    corpus = Path(args.corpus).read_text().splitlines() if args.corpus else None
    out = build_tiny(args.out, args.seed, corpus, args.llm_layers, **{rule: getattr(args, rule) for rule in DECODING_RULES})
    n = sum(p.numel() for p in PixelLMForCausalLM.from_pretrained(out).parameters())
    print(f"wrote a tiny PixelLM ({n / 1e6:.2f}M parameters) to {out}")


if __name__ == "__main__":
    main()
