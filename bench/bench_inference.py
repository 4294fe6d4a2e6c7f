"""Latency of one answer on the tiny model, split into image encoding, prefill, per-token decoding and masks.

    python bench/bench_inference.py [--repeats 5] [--device cpu] [--threads 1] [--out bench/results/inference.json]

Method (printed with the results): a tiny random PixelLM (model/tiny.py) answers through the real
``PixelLMPredictor`` -> ``generate_with_masks`` path (prefill, KV cache, the hidden state of each step kept,
all masks in one decoder call). A random model cannot be asked for an answer of a given length, so a hook
on the LM head replaces each step's logits by a one-hot on the next token of a fixed script (filler words,
then K seg tokens per target, then eos): the answer length and target count are exact, everything else
is the production code. Timestamps come from forward hooks:

- image encoding: ``encode_images`` alone (done once per image, reused by follow-up questions);
- prefill: call start -> end of the first LM-head call (prompt embedding, image splice, LLM over the prompt);
- decode: between the ends of consecutive LM-head calls (argmax, embedding, one cached LLM step, LM head);
- masks: from the first seg-codebook call to the end of the call (codebook, pixel decoder, upsampling).

The LLM decoder is counted: a cached answer of n tokens must call it exactly 1 + (n - 1) times (no second
pass over the answer to collect the seg states). For contrast, one row runs without the KV cache (every
step re-runs the whole sequence, as the original PixelLM did).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_results  # noqa: E402
from model.tiny import build_tiny  # noqa: E402
from serving.predictor import PixelLMPredictor  # noqa: E402

CASES = [(20, 1), (200, 1), (60, 8), (200, 8)]


@dataclass
class Row:
    """Medians over the repeats, in milliseconds."""

    answer_tokens: int
    targets: int
    kv_cache: bool
    image_encoding_ms: float
    prefill_ms: float
    decode_ms_per_token: float
    decode_ms_per_token_first_half: float
    decode_ms_per_token_second_half: float
    masks_ms: float
    total_ms: float
    llm_calls: int


def no_sync() -> None:
    """The CPU runs every op before returning: nothing to wait for before reading the clock."""


class ScriptedTimer:
    """Forces the answer tokens and records when each stage ends (hooks on the LM head, decoder, codebook).

    ``sync`` waits for the device before each timestamp (``torch.cuda.synchronize`` on a GPU, whose
    kernels run asynchronously).
    """

    def __init__(self, model: torch.nn.Module, script: list[int], sync: Callable[[], None] = no_sync) -> None:
        self.script = script
        self.sync = sync
        self.lm_head_ends: list[float] = []
        self.llm_calls = 0
        self.mask_start: float | None = None
        self.handles = [
            model.get_output_embeddings().register_forward_hook(self._force),
            model.language_model.get_decoder().register_forward_pre_hook(self._count),
            model.seg_codebook.register_forward_pre_hook(self._mask_start),
        ]

    def _force(self, module, inputs, logits: torch.Tensor) -> torch.Tensor:
        step = len(self.lm_head_ends)
        forced = torch.full_like(logits, -1e4)
        forced[:, -1, self.script[min(step, len(self.script) - 1)]] = 1e4
        self.sync()
        self.lm_head_ends.append(time.perf_counter())
        return forced

    def _count(self, module, args, kwargs=None) -> None:
        self.llm_calls += 1

    def _mask_start(self, module, args) -> None:
        if self.mask_start is None:
            self.sync()
            self.mask_start = time.perf_counter()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def make_script(tokenizer, seg_ids: tuple[int, ...], length: int, targets: int) -> list[int]:
    """``length`` ids: filler words spread before each of ``targets`` seg groups, then eos last."""
    filler = tokenizer(" the", add_special_tokens=False).input_ids[0]
    words = length - 1 - targets * len(seg_ids)
    if words < targets:
        raise ValueError(f"{targets} targets of K={len(seg_ids)} need more than {length} answer tokens")
    script = []
    for t in range(targets):
        script += [filler] * (words // targets + (t < words % targets)) + list(seg_ids)
    return script + [tokenizer.eos_token_id]


def time_answer(
    predictor: PixelLMPredictor,
    images: list[np.ndarray],
    length: int,
    targets: int,
    use_cache: bool,
    sync: Callable[[], None] = no_sync,
) -> dict:
    """One scripted answer of ``length`` tokens and ``targets`` masks for each of ``images`` (one batch); seconds."""
    model = predictor.model
    script = make_script(predictor.tokenizer, predictor.token_ids.seg, length, targets)
    sync()
    t0 = time.perf_counter()
    features = predictor.encode(images)
    sync()
    encode_s = time.perf_counter() - t0
    prompt = predictor.prompt_ids([], "Please segment everything in this image.", length)
    ids = torch.tensor([prompt] * len(images), device=predictor.device)
    timer = ScriptedTimer(model, script, sync)
    try:
        start = time.perf_counter()
        out = model.generate_with_masks(
            input_ids=ids,
            image_features=features,
            original_sizes=torch.tensor([image.shape[:2] for image in images], device=predictor.device),
            max_new_tokens=length,
            eos_token_id=predictor.eos_token_id,
            use_cache=use_cache,
        )
        sync()
        end = time.perf_counter()
    finally:
        timer.remove()
    if any(seq != script for seq in out.sequences) or any(masks.shape[0] != targets for masks in out.pred_masks):
        raise RuntimeError("the forced script was not followed; the timing would not measure what it claims")
    expected_calls = 1 + (length - 1)
    if timer.llm_calls != expected_calls:
        raise RuntimeError(f"the LLM ran {timer.llm_calls} times for {length} tokens, expected {expected_calls}")
    ends = timer.lm_head_ends
    steps = np.diff(ends)
    half = len(steps) // 2
    return {
        "encode": encode_s,
        "prefill": ends[0] - start,
        "step": float(np.mean(steps)),
        "step_first": float(np.mean(steps[:half])),
        "step_second": float(np.mean(steps[half:])),
        "masks": end - timer.mask_start,
        "total": end - start + encode_s,
        "llm_calls": timer.llm_calls,
    }


def measure(predictor: PixelLMPredictor, image: np.ndarray, length: int, targets: int, use_cache: bool, repeats: int) -> Row:
    time_answer(predictor, [image], length, targets, use_cache)  # warm-up
    runs = [time_answer(predictor, [image], length, targets, use_cache) for _ in range(repeats)]

    def med(key: str) -> float:
        return round(1000 * statistics.median(r[key] for r in runs), 3)

    return Row(length, targets, use_cache, med("encode"), med("prefill"), med("step"), med("step_first"), med("step_second"),
               med("masks"), med("total"), runs[0]["llm_calls"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps numbers stable on a shared machine)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "inference.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        predictor = PixelLMPredictor.from_pretrained(build_tiny(Path(folder) / "tiny", seed=0), device=args.device)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    prompt_tokens = len(predictor.prompt_ids([], "Please segment everything in this image.", 1))
    rows = [measure(predictor, image, n, t, True, args.repeats) for n, t in CASES]
    rows.append(measure(predictor, image, 200, 1, False, max(1, args.repeats // 2)))

    method = __doc__.split("Method (printed with the results): ")[1].strip()
    print(f"Method: {method}\n")
    header = f"{'tokens':>6} {'targets':>7} {'cache':>5} {'encode':>8} {'prefill':>8} {'ms/token':>9} {'1st half':>9} {'2nd half':>9} {'masks':>8} {'total':>9} {'LLM calls':>9}"
    print(f"tiny PixelLM, {args.device}, {torch.get_num_threads()} thread(s), prompt {prompt_tokens} tokens "
          f"({predictor.model.config.num_image_tokens} image), image 640x480, median of {args.repeats}; times in ms")
    print(header)
    for r in rows:
        print(f"{r.answer_tokens:>6} {r.targets:>7} {'yes' if r.kv_cache else 'no':>5} {r.image_encoding_ms:>8.2f} {r.prefill_ms:>8.2f} "
              f"{r.decode_ms_per_token:>9.3f} {r.decode_ms_per_token_first_half:>9.3f} {r.decode_ms_per_token_second_half:>9.3f} "
              f"{r.masks_ms:>8.2f} {r.total_ms:>9.1f} {r.llm_calls:>9}")
    cached = {(r.answer_tokens, r.targets): r for r in rows if r.kv_cache}
    ratio = cached[(200, 1)].decode_ms_per_token / cached[(20, 1)].decode_ms_per_token
    print(f"decode ms/token, 200 vs 20 tokens (1 target): {ratio:.2f}x; LLM calls = 1 prefill + (n - 1) steps in every cached row")

    result = {
        "method": method,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": args.device},
        "prompt_tokens": prompt_tokens,
        "image": [480, 640],
        "repeats": args.repeats,
        "decode_ms_per_token_ratio_200_vs_20": round(ratio, 3),
        "rows": [asdict(r) for r in rows],
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
