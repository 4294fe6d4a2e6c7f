"""Latency of one answer on the tiny model, split into image encoding, prefill, per-token decoding and masks;
and the latency of a first question on a new image and of a follow-up, against an older checkout.

    python bench/bench_inference.py [--repeats 5] [--device cpu] [--threads 1] [--out bench/results/inference.json]
    python bench/bench_inference.py --baseline_tree /tmp/old [--rounds 3] [--out bench/results/first_question.json]
        # first question and follow-up, this checkout against another (git worktree add /tmp/old <commit>)

Method (printed with the results): a tiny random PixelLM (model/tiny.py) answers through the real
``PixelLMPredictor`` -> ``generate_with_masks`` path (prefill, KV cache, the hidden state of each step kept,
all masks in one decoder call). A random model cannot be asked for an answer of a given length, so a hook
on the LM head replaces each step's logits by a one-hot on the next token of a fixed script (filler words,
then K seg tokens per target, then eos): the answer length and target count are exact, everything else
is the production code. Timestamps come from forward hooks:

- image encoding: ``PixelLMPredictor.encode`` alone (CLIP and the LLM's image tokens, once per image, reused by
  follow-up questions; the decoder-side neck runs when the first mask needs it, inside "masks");
- prefill: call start -> end of the first LM-head call (prompt embedding, image splice, LLM over the prompt);
- decode: between the ends of consecutive LM-head calls (argmax, embedding, one cached LLM step, LM head);
- masks: from the first seg-codebook call to the end of the call (codebook, neck, pixel decoder, upsampling).

The LLM decoder is counted: a cached answer of n tokens must call it exactly 1 + (n - 1) times (no second
pass over the answer to collect the seg states). For contrast, one row runs without the KV cache (every
step re-runs the whole sequence, as the original PixelLM did).

First question and follow-up (``--baseline_tree``): the public path a user takes, ``set_image(image)`` then
``ask(question)`` on a new 640x480 image, then a second ``ask`` on the same image, with the same forced
answers: 20 tokens with one target ending in eos (max_new_tokens 64), and 20 tokens of text without a
target that stop at max_new_tokens 20. Time to first token runs from ``set_image`` (or the follow-up's
``ask``) to the end of the first LM-head call; the answer time to the return of ``ask``. LM-head calls are
counted. Both checkouts build their own tiny model with the same seed and run in separate processes, one
after the other, alternating for ``--rounds`` rounds so that both see the same machine load; the medians
over all rounds are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# PIXELLM_CODE_TREE: the checkout whose model/ and serving/ a --first_question_worker process times.
sys.path.insert(0, os.environ.get("PIXELLM_CODE_TREE") or str(Path(__file__).resolve().parents[1]))

from bench.report import text_table, write_results  # noqa: E402
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


# (name, answer tokens, targets, max_new_tokens): the forced answers of the first-question comparison.
FIRST_QUESTION_CASES = [("one target, ends with eos", 20, 1, 64), ("text only, stops at max_new_tokens", 20, 0, 20)]


def ask_timed(predictor: PixelLMPredictor, script: list[int], question: str, budget: int, image: np.ndarray | None) -> dict:
    """One ``ask`` (after ``set_image(image)`` when an image is given) forced to ``script``; seconds and LM-head calls."""
    timer = ScriptedTimer(predictor.model, script)
    try:
        start = time.perf_counter()
        if image is not None:
            predictor.set_image(image)
        answer = predictor.ask(question, max_new_tokens=budget)
        end = time.perf_counter()
    finally:
        timer.remove()
    if answer.token_ids != script[:budget]:
        raise RuntimeError("the forced script was not followed; the timing would not measure what it claims")
    return {"first_token": timer.lm_head_ends[0] - start, "answer": end - start, "lm_head_calls": len(timer.lm_head_ends)}


def first_question_worker(repeats: int) -> list[dict]:
    """First question on a new image and a follow-up, for each case; medians in ms (the code of PIXELLM_CODE_TREE)."""
    with tempfile.TemporaryDirectory() as folder:
        predictor = PixelLMPredictor.from_pretrained(build_tiny(Path(folder) / "tiny", seed=0))
    rng = np.random.default_rng(0)
    filler = predictor.tokenizer(" the", add_special_tokens=False).input_ids[0]
    rows = []
    for name, length, targets, budget in FIRST_QUESTION_CASES:
        script = make_script(predictor.tokenizer, predictor.token_ids.seg, length, targets) if targets else [filler] * length
        runs = []
        for _ in range(1 + repeats):
            image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            first = ask_timed(predictor, script, "Please segment everything in this image.", budget, image)
            follow = ask_timed(predictor, script, "And again, please.", budget, None)
            runs.append((first, follow))
        runs = runs[1:]  # the first was the warm-up

        def med(turn: int, key: str, runs: list = runs) -> float:
            return round(1000 * statistics.median(r[turn][key] for r in runs), 2)

        rows.append({
            "case": name, "answer_tokens": min(length, budget), "max_new_tokens": budget,
            "first_question_first_token_ms": med(0, "first_token"), "first_question_answer_ms": med(0, "answer"),
            "follow_up_first_token_ms": med(1, "first_token"), "follow_up_answer_ms": med(1, "answer"),
            "lm_head_calls": runs[0][0]["lm_head_calls"],
        })
    return rows


def compare_first_question(baseline: Path, rounds: int, repeats: int, threads: int, out: str) -> None:
    """Run first_question_worker on both checkouts, alternating, and print and write the comparison."""
    trees = {"before": baseline.resolve(), "after": Path(__file__).resolve().parents[1]}
    commits = {name: subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
               for name, tree in trees.items()}
    runs: dict[str, list[list[dict]]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PIXELLM_CODE_TREE": str(tree), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
            cmd = [sys.executable, __file__, "--first_question_worker", "--repeats", str(repeats), "--threads", str(threads)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = ["first_question_first_token_ms", "first_question_answer_ms", "follow_up_first_token_ms", "follow_up_answer_ms"]
    rows = []
    for i, (case, *_rest) in enumerate(FIRST_QUESTION_CASES):
        row = {"case": case, **{f"{name}_lm_head_calls": runs[name][0][i]["lm_head_calls"] for name in trees}}
        for key in keys:
            for name in trees:
                row[f"{name}_{key}"] = round(statistics.median(r[i][key] for r in runs[name]), 2)
        rows.append(row)
    method = __doc__.split("First question and follow-up (``--baseline_tree``): ")[1].strip()
    print(f"Method: {method}\n")
    print(f"tiny PixelLM, cpu, {threads} thread(s), before = {commits['before']} ({trees['before']}), after = {commits['after']}; "
          f"{rounds} rounds x {repeats} repeats; times in ms (median)")
    table = [["case", "turn", "first token before", "after", "answer before", "after", "LM-head calls before", "after"]]
    for row in rows:
        for turn, prefix in [("first question", "first_question"), ("follow-up", "follow_up")]:
            table.append([row["case"], turn, f"{row[f'before_{prefix}_first_token_ms']:.1f}", f"{row[f'after_{prefix}_first_token_ms']:.1f}",
                          f"{row[f'before_{prefix}_answer_ms']:.1f}", f"{row[f'after_{prefix}_answer_ms']:.1f}",
                          str(row["before_lm_head_calls"]), str(row["after_lm_head_calls"])])
    print(text_table(table))
    result = {
        "method": method,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": threads,
                    "load_average_at_end": list(os.getloadavg())},
        "before": {"commit": commits["before"]}, "after": {"commit": commits["after"]},
        "rounds": rounds, "repeats": repeats, "rows": rows,
    }
    write_results(out, result)


def latency_breakdown(device: str, repeats: int, out: str) -> None:
    """The per-stage table of the module docstring's method, printed and written to ``out``."""
    with tempfile.TemporaryDirectory() as folder:
        predictor = PixelLMPredictor.from_pretrained(build_tiny(Path(folder) / "tiny", seed=0), device=device)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    prompt_tokens = len(predictor.prompt_ids([], "Please segment everything in this image.", 1))
    rows = [measure(predictor, image, n, t, True, repeats) for n, t in CASES]
    rows.append(measure(predictor, image, 200, 1, False, max(1, repeats // 2)))

    method = __doc__.split("Method (printed with the results): ")[1].split("First question and follow-up")[0].strip()
    print(f"Method: {method}\n")
    header = f"{'tokens':>6} {'targets':>7} {'cache':>5} {'encode':>8} {'prefill':>8} {'ms/token':>9} {'1st half':>9} {'2nd half':>9} {'masks':>8} {'total':>9} {'LLM calls':>9}"
    print(f"tiny PixelLM, {device}, {torch.get_num_threads()} thread(s), prompt {prompt_tokens} tokens "
          f"({predictor.model.config.num_image_tokens} image), image 640x480, median of {repeats}; times in ms")
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
                    "threads": torch.get_num_threads(), "device": device},
        "prompt_tokens": prompt_tokens,
        "image": [480, 640],
        "repeats": repeats,
        "decode_ms_per_token_ratio_200_vs_20": round(ratio, 3),
        "rows": [asdict(r) for r in rows],
    }
    write_results(out, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps numbers stable on a shared machine)")
    parser.add_argument("--out", help="default: bench/results/inference.json, or first_question.json with --baseline_tree")
    parser.add_argument("--baseline_tree", help="another checkout to time the first question and follow-up against")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the --baseline_tree comparison")
    parser.add_argument("--first_question_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results_dir = Path(__file__).resolve().parent / "results"
    if args.first_question_worker:
        print(json.dumps(first_question_worker(args.repeats)))
        return
    if args.baseline_tree:
        compare_first_question(Path(args.baseline_tree), args.rounds, args.repeats, args.threads, args.out or str(results_dir / "first_question.json"))
    else:
        latency_breakdown(args.device, args.repeats, args.out or str(results_dir / "inference.json"))


if __name__ == "__main__":
    main()
