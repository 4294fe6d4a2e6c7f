"""GPU memory per device for training the PixelLM-7B and -13B recipes, estimated from the config alone.

The recipe (docs/training.md, the original's README): bf16 weights, micro batch 2 images per GPU, LoRA
r 8 on the LLM's ``q_proj``/``v_proj``; ``embed_tokens``, ``lm_head``, both projectors, the feature neck,
the seg codebook (``text_hidden_fcs``, fusion weights) and the pixel decoder fully trained; CLIP frozen;
DeepSpeed ZeRO-2 (``configs/ds_zero2.json``) on N GPUs. Parameter counts come from the analytic formulas
of ``bench/param_count.py`` (no model is built; tests/test_memory_estimate.py checks them against the
tiny model as ``training.lora.prepare_trainable`` leaves it). Terms, in bytes per GPU:

- weights: every parameter (CLIP, the LLM with its vocabulary resized for the PixelLM tokens, PixelLM's
  modules, LoRA) in bf16, 2 bytes each; ZeRO-2 does not partition weights.
- optimizer: fp32 master copy + Adam m + Adam v of the trainable parameters, 12 bytes each, / N.
- gradients: bf16 gradients of the trainable parameters, 2 bytes each, / N (ZeRO-2 keeps only the
  rank's partition after each bucket is reduced).
- buckets: ZeRO-2's contiguous gradient buffers, ``reduce_bucket_size`` elements in bf16, twice with
  ``overlap_comm`` (read from ``configs/ds_zero2.json``).
- LLM activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", per layer ``34·s·b·h + 5·a·s²·b`` bytes (16-bit activations; the second term is the attention
  score matrix, absent with flash / memory-efficient attention). Full gradient checkpointing keeps the
  layer input, ``2·s·b·h`` bytes per layer, plus one layer's full activations while it is recomputed.
  s = ``model_max_length`` (512, the image tokens included: every conversation padded to the maximum),
  b = micro batch × conversations per image (the LLM sees one row per conversation; sem_seg, refer_seg
  and ReasonSeg ask up to ``num_classes_per_sample`` = 3 questions per image).
- logits: ``s·b·V`` in fp32 (4 bytes) for the cross-entropy, V the resized vocabulary.
- CLIP peak: the frozen tower runs without an autograd graph, once per image: the hidden states kept
  until the deepest requested layer (``vision_feature_layers``), ``2·s·b·h`` bytes each with s = patches
  + 1, plus one layer's working set (q, k, v, attention output: ``4·s·b·h``; scores and probabilities:
  ``2·a·s²·b``; MLP hidden before and after the activation: ``2·s·b·i``), all in bf16. It is freed before
  the LLM runs, so the total adds max(CLIP peak, LLM activations + logits) to the static terms.

Not counted: the Korthikanti formula is for a GPT layer (4h MLP, dropout masks); LLaMA's SwiGLU MLP
(3 matrices of width 2.7h) and its missing dropout roughly cancel, and frozen linear layers need not keep
their inputs, so it is an upper bound for LoRA training. Also left out: the decoder-side activations
(``out_mm_projector`` on the 1024 patches of both levels, neck, pixel decoder, full-resolution mask
losses; of the order of a few hundred MB at batch 2), the transient fp32 gradient partition and the
all-gather bucket of the optimizer step (they live after the activations are freed), the CUDA context
and allocator fragmentation.

Run: ``python -m bench.memory_estimate`` (or ``make bench``). Prints a table and writes
``bench/results/memory_estimate.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.param_count import (
    NUM_IMAGE_TOKENS_ADDED,
    clip_vision_analytic,
    hypernetwork_mlp,
    llama_analytic,
    load_presets,
    pixellm_part_counts,
)
from bench.report import text_table, write_results
from model import PixelLMConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG = REPO_ROOT / "configs" / "ds_zero2.json"
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "memory_estimate.json"
PRESETS = ("pixellm_7b", "pixellm_13b")
GPU_COUNTS = (1, 4, 8)
GIB = 1024**3


@dataclass(frozen=True)
class TrainingSetup:
    """The recipe's choices that the estimate depends on."""

    micro_batch: int = 2
    conversations_per_image: int = 3
    model_max_length: int = 512
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    weight_bytes: int = 2
    reduce_bucket_size: int = 500_000_000
    overlap_comm: bool = True
    flash_attention: bool = False

    @property
    def llm_rows(self) -> int:
        """b of the LLM: conversations in one micro-batch."""
        return self.micro_batch * self.conversations_per_image


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need from one model: parameter counts and the LLM / CLIP dimensions."""

    params: int
    trainable: int
    llm_layers: int
    llm_hidden: int
    llm_heads: int
    vocab: int
    clip_tokens: int
    clip_hidden: int
    clip_heads: int
    clip_intermediate: int
    clip_states_kept: int
    num_image_tokens: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, one field per term (see the module docstring)."""

    weights: int
    optimizer: int
    gradients: int
    buckets: int
    llm_activations: int
    attention_scores: int
    logits: int
    clip_peak: int

    @property
    def total(self) -> int:
        static = self.weights + self.optimizer + self.gradients + self.buckets
        return static + max(self.clip_peak, self.llm_activations + self.logits)


def lora_params(config: PixelLMConfig, r: int, targets: tuple[str, ...]) -> int:
    """LoRA A (r × in) and B (out × r) of every target linear layer of the LLM."""
    text = config.text_config
    hidden, inter = text.hidden_size, text.intermediate_size
    head_dim = getattr(text, "head_dim", None) or hidden // text.num_attention_heads
    q_width, kv_width = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
    shapes = {
        "q_proj": (hidden, q_width),
        "k_proj": (hidden, kv_width),
        "v_proj": (hidden, kv_width),
        "o_proj": (q_width, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose from {sorted(shapes)}")
    return text.num_hidden_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def pixellm_module_params(config: PixelLMConfig) -> int:
    """Parameters of our PixelLM modules (projectors, neck, seg codebook, pixel decoder).

    ``bench/param_count.py`` counts the original's decoder, which holds one hypernetwork MLP per mask
    token and an IoU head; ours keeps the one hypernetwork it uses and no IoU head.
    """
    dim, masks = config.out_dim, config.num_mask_tokens
    unused = (masks - 1) * hypernetwork_mlp(dim, dim // 8) + hypernetwork_mlp(dim, masks)
    return pixellm_part_counts(config)["total"] - unused


def model_shape(config: PixelLMConfig, setup: TrainingSetup) -> ModelShape:
    """Counts and dimensions of ``config`` with its vocabulary resized for the seg and image tokens."""
    text, vision = config.text_config, config.vision_config
    vocab = text.vocab_size + config.tokens_per_target + NUM_IMAGE_TOKENS_ADDED
    pixellm = pixellm_module_params(config)
    lora = lora_params(config, setup.lora_r, setup.lora_targets) if setup.lora_r else 0
    heads = 1 if text.tie_word_embeddings else 2
    num_clip_layers = vision.num_hidden_layers
    deepest = max(layer % (num_clip_layers + 1) for layer in config.vision_feature_layers)
    return ModelShape(
        params=clip_vision_analytic(vision) + llama_analytic(text, vocab) + pixellm + lora,
        trainable=heads * vocab * text.hidden_size + pixellm + lora,
        llm_layers=text.num_hidden_layers,
        llm_hidden=text.hidden_size,
        llm_heads=text.num_attention_heads,
        vocab=vocab,
        clip_tokens=config.vision_grid**2 + 1,
        clip_hidden=vision.hidden_size,
        clip_heads=vision.num_attention_heads,
        clip_intermediate=vision.intermediate_size,
        clip_states_kept=deepest + 1,
        num_image_tokens=config.num_image_tokens,
    )


def optimizer_bytes(trainable: int, gpus: int) -> int:
    """fp32 master weights + Adam m + Adam v, partitioned over the GPUs (ZeRO-1/2)."""
    return 12 * trainable // gpus


def gradient_bytes(trainable: int, gpus: int) -> int:
    """bf16 gradients of the trainable parameters, partitioned over the GPUs (ZeRO-2)."""
    return 2 * trainable // gpus


def bucket_bytes(setup: TrainingSetup) -> int:
    """ZeRO-2's contiguous gradient reduction buffers (double-buffered with overlap_comm)."""
    return (2 if setup.overlap_comm else 1) * setup.reduce_bucket_size * setup.weight_bytes


def layer_activation_bytes(s: int, b: int, h: int, a: int, flash_attention: bool) -> tuple[int, int]:
    """(34·s·b·h, 5·a·s²·b): one transformer layer's stored activations, the second term the attention scores."""
    return 34 * s * b * h, 0 if flash_attention else 5 * a * s * s * b


def llm_activation_bytes(shape: ModelShape, setup: TrainingSetup, checkpointing: bool) -> tuple[int, int]:
    """(all stored LLM activations, of which attention scores) for one micro-batch."""
    s, b = setup.model_max_length, setup.llm_rows
    dense, scores = layer_activation_bytes(s, b, shape.llm_hidden, shape.llm_heads, setup.flash_attention)
    if checkpointing:
        return shape.llm_layers * 2 * s * b * shape.llm_hidden + dense + scores, scores
    return shape.llm_layers * (dense + scores), shape.llm_layers * scores


def logits_bytes(shape: ModelShape, setup: TrainingSetup) -> int:
    """fp32 logits of every position for the cross-entropy."""
    return 4 * setup.model_max_length * setup.llm_rows * shape.vocab


def clip_peak_bytes(shape: ModelShape, setup: TrainingSetup) -> int:
    """Live peak of the frozen CLIP forward: kept hidden states plus one layer's working set (bf16)."""
    s, b, h = shape.clip_tokens, setup.micro_batch, shape.clip_hidden
    states = shape.clip_states_kept * s * b * h
    scores = 0 if setup.flash_attention else 2 * shape.clip_heads * s * s * b
    working = 4 * s * b * h + scores + 2 * s * b * shape.clip_intermediate
    return 2 * (states + working)


def estimate(shape: ModelShape, setup: TrainingSetup, gpus: int, checkpointing: bool) -> MemoryEstimate:
    activations, scores = llm_activation_bytes(shape, setup, checkpointing)
    return MemoryEstimate(
        weights=setup.weight_bytes * shape.params,
        optimizer=optimizer_bytes(shape.trainable, gpus),
        gradients=gradient_bytes(shape.trainable, gpus),
        buckets=bucket_bytes(setup),
        llm_activations=activations,
        attention_scores=scores,
        logits=logits_bytes(shape, setup),
        clip_peak=clip_peak_bytes(shape, setup),
    )


def setup_from_ds_config(path: Path = DS_CONFIG) -> TrainingSetup:
    """The default recipe with the ZeRO bucket settings of a DeepSpeed JSON."""
    zero = json.loads(path.read_text())["zero_optimization"]
    return TrainingSetup(reduce_bucket_size=int(zero["reduce_bucket_size"]), overlap_comm=bool(zero["overlap_comm"]))


COLUMNS = (
    ("weights", "weights"),
    ("optim", "optimizer"),
    ("grads", "gradients"),
    ("buckets", "buckets"),
    ("LLM act", "llm_activations"),
    ("(attn)", "attention_scores"),
    ("logits", "logits"),
    ("CLIP", "clip_peak"),
    ("total", "total"),
)


def format_table(rows: list[dict]) -> str:
    """One line per (model, GPUs, checkpointing); every memory column in GiB."""
    table = [["model", "GPUs", "ckpt", *(name for name, _ in COLUMNS)]]
    for row in rows:
        cells = [f"{row['bytes'][key] / GIB:.2f}" for _, key in COLUMNS]
        table.append([row["model"], str(row["gpus"]), "yes" if row["gradient_checkpointing"] else "no", *cells])
    return text_table(table)


def run(setup: TrainingSetup) -> dict:
    """Shapes and estimates of every preset in ``PRESETS`` for every GPU count, with and without checkpointing."""
    presets = load_presets()
    shapes = {name: model_shape(PixelLMConfig(**presets[name]), setup) for name in PRESETS}
    rows = []
    for name, shape in shapes.items():
        for gpus in GPU_COUNTS:
            for checkpointing in (False, True):
                result = estimate(shape, setup, gpus, checkpointing)
                rows.append(
                    {
                        "model": name,
                        "gpus": gpus,
                        "gradient_checkpointing": checkpointing,
                        "bytes": {**asdict(result), "total": result.total},
                        "total_gib": round(result.total / GIB, 2),
                    }
                )
    return {
        "setup": {**asdict(setup), "llm_rows": setup.llm_rows},
        "models": {name: asdict(shape) for name, shape in shapes.items()},
        "rows": rows,
    }


def main() -> None:
    results = run(setup_from_ds_config())
    setup = results["setup"]
    print(
        f"per GPU, ZeRO-2, bf16, micro batch {setup['micro_batch']} images x {setup['conversations_per_image']} "
        f"conversations, s = {setup['model_max_length']}, LoRA r {setup['lora_r']} on {','.join(setup['lora_targets'])}; GiB"
    )
    print(format_table(results["rows"]))
    print("(attn): the part of 'LLM act' that flash / memory-efficient attention does not store.")
    print("total = weights + optim + grads + buckets + max(CLIP, LLM act + logits)")
    write_results(RESULTS_FILE, results)


if __name__ == "__main__":
    main()
