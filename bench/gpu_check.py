"""A GPU check of the real-size recipe: DeepSpeed training steps, generation, the predictor, bf16 equivalence.

    python bench/gpu_check.py [--tiny] [--budget_s 360] [--llm_layers N] [--sections a,b] [--out FILE.json]
    make gpu-check

The device is the one DeepSpeed's accelerator reports, as in ``train_ds.py``. On CUDA (the full form), in
bf16, with random weights (``bench/random_pixellm.py``; nothing is downloaded):

- model: ``configs/models/pixellm_7b.json`` (LLaMA-2-7B shape, vocabulary 32,000 + 9 PixelLM tokens, CLIP
  ViT-L/14 at 448, the PixelLM decoder), built directly on the GPU;
- training: the engine of ``train_ds.py`` (``training.trainer.initialize_engine``: LoRA r 8 on q_proj/v_proj,
  the fully trained groups, ``configs/ds_zero2.json`` / ``ds_zero3.json``, DeepSpeed's FusedAdam), micro
  batch 2 images x 3 conversations of 512 text + 256 image tokens with 2 targets each, through the real
  collator; ZeRO-2 and ZeRO-3, each with and without gradient checkpointing; one optimizer step per micro
  batch. Seconds per step (median of the timed steps after one warm-up step) and peak memory
  (``torch.cuda.max_memory_allocated``) next to ``bench/memory_estimate.py``'s estimate of the same setting;
- inference: ``generate_with_masks`` with the KV cache at batch 1 and 8, answers forced to a script of
  128 tokens and 3 targets (``bench/bench_inference.py``), masks decoded: image encoding, prefill, time to
  first token, decode tokens/s; then ``PixelLMPredictor`` on a 1920x1080 image;
- equivalence: one forward of ``configs/models/tiny.json`` in bf16 on the device against fp32 on the CPU,
  same weights and batch (plus bf16 on the CPU as the baseline of what bf16 alone changes);
- environment: versions, the GPU, the attention implementation the model runs (SDPA, as the project's
  loaders ask for; flash-attn is only reported).

Without CUDA, or with ``--tiny``, the same sections run on ``configs/models/tiny.json`` with small sizes:
the tiny form, which CI runs (tests/test_gpu_check.py) so that the script keeps working. On the CPU its
training and inference sections run in fp32 (``--precision bf16`` to change that: bf16 matrix products
are an order of magnitude slower on CPUs without bf16 instructions); the equivalence section always
compares bf16 with fp32. Its figures are no GPU figures.

Each section runs in try/except: an error is recorded with its traceback and the next section runs.
A section is skipped when less of ``--budget_s`` is left than it needs. The JSON and the text table
beside it are rewritten after every section, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_inference import ScriptedTimer, make_script, time_answer  # noqa: E402
from bench.memory_estimate import GIB, TrainingSetup, estimate, lora_params, model_shape  # noqa: E402
from bench.random_pixellm import QUESTION, build_random_pixellm, preset_kwargs, recipe_batch  # noqa: E402
from bench.report import text_table, write_results  # noqa: E402
from model import PixelLMConfig  # noqa: E402
from model.modeling_pixellm import model_inputs  # noqa: E402
from serving.predictor import PixelLMPredictor  # noqa: E402
from training.args import TrainArgs  # noqa: E402
from training.distributed import DistInfo, init_distributed, seed_everything  # noqa: E402
from training.ds_config import build_ds_config  # noqa: E402
from training.trainer import initialize_engine  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TRAIN_SETTINGS = ((2, False), (2, True), (3, False), (3, True))
BF16 = torch.bfloat16
PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Relative L2 error of bf16 against fp32 that one forward of the tiny model may show: bf16 keeps 8
# significant bits (unit roundoff 2^-8, about 0.004), and every matmul, norm and residual add rounds again.
# The CPU bf16 run of the same forward is the baseline of what bf16 alone changes.
BF16_REL_TOLERANCE = 0.05


@dataclass(frozen=True)
class CheckForm:
    """The sizes of one form of the check."""

    name: str
    preset: str
    text_tokens: int
    micro_batch: int = 2
    rows_per_image: int = 3
    targets_per_row: int = 2
    train_image_hw: tuple[int, int] = (480, 640)
    timed_steps: int = 3
    answer_tokens: int = 128
    answer_targets: int = 3
    generate_batches: tuple[int, ...] = (1, 8)
    repeats: int = 3
    predictor_image_hw: tuple[int, int] = (1080, 1920)
    llm_layers: int | None = None
    # Seconds a section needs at least: it is skipped when less of the budget is left.
    section_seconds: tuple[tuple[str, float], ...] = ()

    def needs(self, section: str) -> float:
        return dict(self.section_seconds).get(section, 0.0)


FULL = CheckForm(
    name="full",
    preset="pixellm_7b",
    text_tokens=512,
    section_seconds=(("equivalence", 15), ("inference", 45), ("predictor", 20), ("fused_adam", 30), ("train", 40)),
)
# Small enough for CI's two cores.
TINY = CheckForm(
    name="tiny",
    preset="tiny",
    text_tokens=96,
    train_image_hw=(120, 160),
    timed_steps=1,
    answer_tokens=16,
    answer_targets=2,
    generate_batches=(1, 2),
    repeats=1,
    predictor_image_hw=(240, 320),
)


def train_section(zero_stage: int, checkpointing: bool) -> str:
    return f"train_zero{zero_stage}" + ("_ckpt" if checkpointing else "")


SECTIONS = ("environment", "equivalence", "inference", "predictor", "fused_adam", *(train_section(*s) for s in TRAIN_SETTINGS))


class DeviceMemory:
    """Synchronisation and memory statistics of one device (CUDA figures; None on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        """Free what is unreferenced and start a new peak."""
        gc.collect()
        if self.cuda:
            with torch.cuda.device(self.device):
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def allocated_gib(self) -> float | None:
        return round(torch.cuda.memory_allocated(self.device) / GIB, 3) if self.cuda else None

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated(self.device) / GIB, 3) if self.cuda else None

    def peak_reserved_gib(self) -> float | None:
        return round(torch.cuda.max_memory_reserved(self.device) / GIB, 3) if self.cuda else None


def ms(seconds: float) -> float:
    return round(1000 * seconds, 3)


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def attention_of(model) -> dict[str, str]:
    return {
        "language_model": model.language_model.config._attn_implementation,
        "vision_tower": model.vision_tower.config._attn_implementation,
    }


def compare(output: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """max |output - reference| and ||output - reference|| / ||reference|| (both in float32 on the CPU)."""
    output, reference = output.float().cpu(), reference.float().cpu()
    diff = output - reference
    return {
        "max_abs_diff": float(diff.abs().max()),
        "rel_l2": float(diff.norm() / reference.norm().clamp_min(1e-12)),
    }


class GpuCheck:
    """Runs the sections of one form on ``dist.device`` and keeps the results."""

    def __init__(self, form: CheckForm, dist: DistInfo, precision: str, budget_s: float, out: Path, seed: int = 0) -> None:
        self.form = form
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.dist = dist
        self.device = dist.device
        self.memory = DeviceMemory(dist.device)
        self.out = out
        self.seed = seed
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.fused_adam = self.device.type == "cuda"
        self._predictor = None
        self.results: dict = {
            "form": form.name,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "note": (
                "full form on a CUDA device"
                if form.name == "full"
                else "tiny form (configs/models/tiny.json, small sizes): keeps the script working; no GPU figures"
            ),
            "settings": {**asdict(form), "budget_s": budget_s, "device": str(self.device), "precision": precision},
            "sections": {},
        }

    # -- running ---------------------------------------------------------------------------------------
    def run(self, names: tuple[str, ...]) -> dict:
        sections: dict[str, Callable[[], dict]] = {
            "environment": self.environment,
            "equivalence": self.equivalence,
            "inference": self.inference,
            "predictor": self.predictor,
            "fused_adam": self.build_fused_adam,
        }
        for stage, ckpt in TRAIN_SETTINGS:
            sections[train_section(stage, ckpt)] = lambda stage=stage, ckpt=ckpt: self.train(stage, ckpt)
        for i, name in enumerate(names):
            self.run_section(name, sections[name])
            if name in ("inference", "predictor") and "predictor" not in names[i + 1 :]:
                self._predictor = None
        self.results["seconds"] = round(time.monotonic() - self.started, 1)
        self.write()
        return self.results

    def run_section(self, name: str, section: Callable[[], dict]) -> None:
        needs = self.form.needs("train" if name.startswith("train_") else name)
        left = self.deadline - time.monotonic()
        if left < needs:
            self.results["sections"][name] = {"status": "skipped", "reason": f"{left:.0f} s of the budget left, the section needs about {needs:.0f} s"}
            print(f"== {name}: skipped ({left:.0f} s left)", flush=True)
            self.write()
            return
        print(f"== {name}", flush=True)
        start = time.monotonic()
        try:
            record = {"status": "ok", **section()}
        except Exception as err:  # noqa: BLE001 (every failure is a finding: record it, go on with the next section)
            record = {"status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
            traceback.print_exc()
        record["seconds"] = round(time.monotonic() - start, 1)
        self.memory.reset()
        record["allocated_after_gib"] = self.memory.allocated_gib()
        self.results["sections"][name] = record
        print(f"   {record['status']} in {record['seconds']} s", flush=True)
        self.write()

    def write(self) -> None:
        write_results(self.out, self.results)
        self.out.with_suffix(".txt").write_text(format_report(self.results) + "\n")

    # -- sections --------------------------------------------------------------------------------------
    def environment(self) -> dict:
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        env = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "torch_threads": torch.get_num_threads(),
            "variables": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST")},
            "device": str(self.device),
            "deepspeed_accelerator": accelerator.device_name(),
            "comm_backend": accelerator.communication_backend_name(),
            "bf16_supported": bool(accelerator.is_bf16_supported()),
            "packages": {name: package_version(name) for name in ("deepspeed", "transformers", "peft", "accelerate", "tokenizers", "huggingface-hub", "flash-attn")},
        }
        if self.memory.cuda:
            props = torch.cuda.get_device_properties(self.device)
            env.update(
                gpu=props.name,
                capability=f"{props.major}.{props.minor}",
                gpu_memory_gib=round(props.total_memory / GIB, 1),
                multiprocessors=props.multi_processor_count,
                sdp_backends={
                    "flash": torch.backends.cuda.flash_sdp_enabled(),
                    "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                    "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                    "math": torch.backends.cuda.math_sdp_enabled(),
                },
            )
        return env

    def equivalence(self) -> dict:
        """Logits and mask logits of one forward in bf16 on the device (and on the CPU) against fp32 on the CPU."""
        cpu = torch.device("cpu")
        reference = build_random_pixellm("tiny", cpu, torch.float32, seed=self.seed)
        batch = recipe_batch(reference, 2, TINY.rows_per_image, TINY.targets_per_row, TINY.text_tokens, TINY.train_image_hw, self.seed)
        expected = self._forward(reference.model, batch, cpu, torch.float32)
        weights = reference.model.state_dict()
        runs = {f"bf16 on {self.device}": self.device}
        if self.device.type != "cpu":
            runs["bf16 on cpu"] = cpu
        result = {"model": "configs/models/tiny.json", "reference": "fp32 on cpu", "tolerance_rel_l2": BF16_REL_TOLERANCE, "runs": {}}
        for name, device in runs.items():
            candidate = build_random_pixellm("tiny", device, BF16, seed=self.seed)
            candidate.model.load_state_dict(weights)
            got = self._forward(candidate.model, batch, device, BF16)
            logits, masks = compare(got["logits"], expected["logits"]), compare(got["masks"], expected["masks"])
            result["runs"][name] = {
                "logits": {**logits, "argmax_agreement": float((got["logits"].argmax(-1) == expected["logits"].argmax(-1)).float().mean())},
                "mask_logits": {**masks, "sign_agreement": float(((got["masks"] > 0) == (expected["masks"] > 0)).float().mean())},
                "loss_abs_diff": abs(got["loss"] - expected["loss"]),
                "attention": attention_of(candidate.model),
            }
        device_run = result["runs"][f"bf16 on {self.device}"]
        result["within_tolerance"] = max(device_run["logits"]["rel_l2"], device_run["mask_logits"]["rel_l2"]) <= BF16_REL_TOLERANCE
        return result

    @staticmethod
    @torch.no_grad()
    def _forward(model, batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
        out = model(**model_inputs(batch, device, dtype))
        return {
            "logits": out.logits.float().cpu(),
            "masks": torch.cat([m.flatten() for m in out.pred_masks]).float().cpu(),
            "loss": float(out.loss),
        }

    def _inference_predictor(self) -> PixelLMPredictor:
        if self._predictor is None:
            built = build_random_pixellm(self.form.preset, self.device, self.dtype, self.seed, self.form.llm_layers)
            self._predictor = PixelLMPredictor(built.model, built.tokenizer, built.processor)
        return self._predictor

    def inference(self) -> dict:
        """generate_with_masks at each batch size: medians over the repeats after one warm-up answer."""
        self.memory.reset()
        start = time.monotonic()
        predictor = self._inference_predictor()
        build_s = time.monotonic() - start
        rng = np.random.default_rng(self.seed)
        form = self.form
        rows = []
        for batch in form.generate_batches:
            images = [rng.integers(0, 256, (*form.train_image_hw, 3), dtype=np.uint8) for _ in range(batch)]
            self.memory.reset()
            time_answer(predictor, images, form.answer_tokens, form.answer_targets, True, self.memory.sync)
            runs = [time_answer(predictor, images, form.answer_tokens, form.answer_targets, True, self.memory.sync) for _ in range(form.repeats)]
            rows.append(
                {
                    "batch": batch,
                    "encode_ms": ms(median_of(runs, "encode")),
                    "prefill_ms": ms(median_of(runs, "prefill")),
                    "time_to_first_token_ms": ms(median_of(runs, "encode") + median_of(runs, "prefill")),
                    "decode_ms_per_step": ms(median_of(runs, "step")),
                    "decode_tokens_per_s": round(batch / median_of(runs, "step"), 1),
                    "masks_ms": ms(median_of(runs, "masks")),
                    "total_ms": ms(median_of(runs, "total")),
                    "llm_calls": runs[0]["llm_calls"],
                    "peak_gib": self.memory.peak_gib(),
                }
            )
        model = predictor.model
        return {
            "model": f"configs/models/{form.preset}.json",
            "parameters": sum(p.numel() for p in model.parameters()),
            "llm_layers": model.config.text_config.num_hidden_layers,
            "build_s": round(build_s, 2),
            "attention": attention_of(model),
            "prompt_tokens": len(predictor.prompt_ids([], "Please segment everything in this image.", form.answer_tokens)),
            "answer_tokens": form.answer_tokens,
            "answer_targets": form.answer_targets,
            "image_hw": list(form.train_image_hw),
            "rows": rows,
        }

    def predictor(self) -> dict:
        """PixelLMPredictor.start + reply on one large image: embedding, the scripted answer, masks at full size."""
        predictor = self._inference_predictor()
        form = self.form
        sync = self.memory.sync
        image = np.random.default_rng(self.seed + 1).integers(0, 256, (*form.predictor_image_hw, 3), dtype=np.uint8)
        script = make_script(predictor.tokenizer, predictor.token_ids.seg, form.answer_tokens, form.answer_targets)
        question = QUESTION.split("\n", 1)[1]
        self.memory.reset()
        runs = []
        for _ in range(1 + form.repeats):
            sync()
            t0 = time.perf_counter()
            session = predictor.start(image)
            sync()
            t1 = time.perf_counter()
            timer = ScriptedTimer(predictor.model, script, sync)
            try:
                answer = predictor.reply(session, question, max_new_tokens=form.answer_tokens)
                sync()
                t2 = time.perf_counter()
            finally:
                timer.remove()
            if answer.token_ids != script or len(answer.targets) != form.answer_targets:
                raise RuntimeError(f"the predictor returned {len(answer.targets)} targets for the scripted {form.answer_targets}")
            if answer.targets[0].mask.shape != image.shape[:2]:
                raise RuntimeError(f"mask shape {answer.targets[0].mask.shape} differs from the image's {image.shape[:2]}")
            ends = timer.lm_head_ends
            runs.append(
                {
                    "start": t1 - t0,
                    "first_token": ends[0] - t1,
                    "step": float(np.mean(np.diff(ends))),
                    "masks": t2 - timer.mask_start,
                    "reply": t2 - t1,
                }
            )
        runs = runs[1:]  # the first was the warm-up
        return {
            "image_hw": list(form.predictor_image_hw),
            "answer_tokens": form.answer_tokens,
            "answer_targets": form.answer_targets,
            "start_ms": ms(median_of(runs, "start")),
            "time_to_first_token_ms": ms(median_of(runs, "first_token")),
            "decode_ms_per_token": ms(median_of(runs, "step")),
            "masks_and_answer_ms": ms(median_of(runs, "masks")),
            "reply_ms": ms(median_of(runs, "reply")),
            "peak_gib": self.memory.peak_gib(),
        }

    def build_fused_adam(self) -> dict:
        """Build (just in time) DeepSpeed's FusedAdam, which the recipe's configs use on CUDA."""
        if self.device.type != "cuda":
            self.fused_adam = False
            return {"built": False, "reason": f"{self.device.type}: build_ds_config selects torch's AdamW"}
        from deepspeed.ops.op_builder import FusedAdamBuilder

        self.fused_adam = False
        start = time.monotonic()
        FusedAdamBuilder().load()
        self.fused_adam = True
        return {"built": True, "build_s": round(time.monotonic() - start, 1)}

    def train(self, zero_stage: int, checkpointing: bool) -> dict:
        """Optimizer steps of one micro batch each through train_ds.py's engine; time and peak memory."""
        form = self.form
        sync = self.memory.sync
        self.memory.reset()
        before = self.memory.allocated_gib()
        start = time.monotonic()
        built = build_random_pixellm(form.preset, self.device, self.dtype, self.seed, form.llm_layers)
        params = sum(p.numel() for p in built.model.parameters())
        args = TrainArgs(
            version=f"random weights, configs/models/{form.preset}.json",
            batch_size=form.micro_batch,
            grad_accumulation_steps=1,
            epochs=1,
            steps_per_epoch=form.timed_steps + 1,
            warmup_steps=1,
            zero_stage=zero_stage,
            gradient_checkpointing=checkpointing,
            precision=self.precision,
            torch_adam=not self.fused_adam,
        )
        engine, trainable = initialize_engine(built.model, args, self.dist)
        try:
            setup_s = time.monotonic() - start
            after_init = self.memory.allocated_gib()
            batch = model_inputs(
                recipe_batch(built, form.micro_batch, form.rows_per_image, form.targets_per_row, form.text_tokens, form.train_image_hw, self.seed),
                self.device,
                self.dtype,
            )
            engine.train()
            times, losses = [], []
            for _ in range(1 + form.timed_steps):
                sync()
                t0 = time.perf_counter()
                out = engine(**batch)
                engine.backward(out.loss)
                engine.step()
                sync()
                times.append(time.perf_counter() - t0)
                losses.append(float(out.loss.detach()))
            if not all(np.isfinite(losses)):
                raise FloatingPointError(f"non-finite training losses {losses}")
            optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
            result = {
                "zero_stage": zero_stage,
                "gradient_checkpointing": checkpointing,
                "parameters": params,
                # ZeRO-3 keeps each parameter's full size in ds_numel (the tensor itself holds only this rank's part).
                "trainable_parameters": sum(getattr(p, "ds_numel", p.numel()) for n, p in engine.module.named_parameters() if n in set(trainable)),
                "llm_layers": built.model.config.text_config.num_hidden_layers,
                "optimizer": type(optimizer).__name__,
                "attention": attention_of(built.model),
                "rows": form.micro_batch * form.rows_per_image,
                "row_tokens": batch["input_ids"].shape[1],
                "setup_s": round(setup_s, 2),
                "step_s": [round(t, 4) for t in times],
                "median_step_s": round(statistics.median(times[1:]), 4),
                "losses": [round(x, 4) for x in losses],
                "allocated_before_gib": before,
                "allocated_after_init_gib": after_init,
                "peak_gib": self.memory.peak_gib(),
                "peak_reserved_gib": self.memory.peak_reserved_gib(),
            }
        finally:
            engine.destroy()
            del engine
        result.update(self._estimates(built.estimate_config, args, checkpointing, result["row_tokens"], result["peak_gib"]))
        return result

    def _estimates(self, config: PixelLMConfig, args: TrainArgs, checkpointing: bool, row_tokens: int, peak_gib: float | None) -> dict:
        """bench/memory_estimate.py for the measured setting, with and without stored attention scores."""
        ds = build_ds_config(args, self.dist.world_size, self.device.type)
        zero = ds["zero_optimization"]
        setup = TrainingSetup(
            micro_batch=args.batch_size,
            conversations_per_image=self.form.rows_per_image,
            model_max_length=row_tokens,
            lora_r=args.lora_r,
            lora_targets=tuple(args.lora_targets),
            reduce_bucket_size=int(zero["reduce_bucket_size"]),
            overlap_comm=bool(zero["overlap_comm"]),
        )
        out = {}
        for key, flash in (("estimate_gib", False), ("estimate_no_scores_gib", True)):
            shape_setup = replace(setup, flash_attention=flash)
            out[key] = round(estimate(model_shape(config, shape_setup), shape_setup, self.dist.world_size, checkpointing).total / GIB, 3)
        # The estimate counts LoRA too; the parameters were counted before LoRA was added.
        out["estimate_params_without_lora"] = model_shape(config, setup).params - lora_params(config, setup.lora_r, setup.lora_targets)
        # SDPA and flash attention on a GPU keep no score matrix: that estimate is the one to compare with.
        out["measured_over_estimate"] = round(peak_gib / out["estimate_no_scores_gib"], 3) if peak_gib is not None else None
        full_layers = preset_kwargs(self.form.preset)["text_config"]["num_hidden_layers"]
        layers = config.text_config.num_hidden_layers
        if layers != full_layers and peak_gib is not None:
            full = PixelLMConfig(**preset_kwargs(self.form.preset))
            full_setup = replace(setup, flash_attention=True)
            extra = estimate(model_shape(full, full_setup), full_setup, self.dist.world_size, checkpointing).total / GIB - out["estimate_no_scores_gib"]
            out["extrapolated"] = {
                "llm_layers": full_layers,
                "peak_gib": round(peak_gib + extra, 3),
                "note": f"measured with {layers} of {full_layers} LLM layers; peak plus the estimated memory of the other layers",
            }
        return out


# -- report ------------------------------------------------------------------------------------------------
def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(results: dict) -> str:
    """The short text table of a results dict (also what the script prints last)."""
    sections = results["sections"]
    lines = [f"PixelLM GPU check, {results['form']} form, {results['date_utc']}: {results['note']}"]
    env = sections.get("environment", {})
    if env.get("status") == "ok":
        packages = env["packages"]
        lines.append(
            f"device {env.get('gpu', env['device'])}, torch {env['torch']} (CUDA {env['torch_cuda']}), deepspeed {packages['deepspeed']}, "
            f"transformers {packages['transformers']}, peft {packages['peft']}, flash-attn {packages['flash-attn'] or 'not installed'}"
        )
    train = [(name, sections[name]) for name in SECTIONS if name.startswith("train_") and name in sections]
    done = [(name, r) for name, r in train if r["status"] == "ok"]
    if done:
        first = done[0][1]
        lines += [
            "",
            (
                f"training, {results['settings']['precision']}: {_count(first['parameters'])} parameters ({first['llm_layers']} LLM layers), "
                f"micro batch {first['rows']} rows of {first['row_tokens']} tokens, optimizer {first['optimizer']}, "
                f"attention {first['attention']['language_model']}"
            ),
        ]
        table = [["setting", "s/step", "peak GiB", "estimate GiB", "measured/estimate"]]
        for name, r in done:
            label = f"ZeRO-{r['zero_stage']}" + (" + ckpt" if r["gradient_checkpointing"] else "")
            table.append([label, _fmt(r["median_step_s"], 3), _fmt(r["peak_gib"]), _fmt(r["estimate_no_scores_gib"]), _fmt(r["measured_over_estimate"])])
        lines += [text_table(table), "estimate: bench/memory_estimate.py for the same setting, attention scores not stored"]
    inference = sections.get("inference", {})
    if inference.get("status") == "ok":
        lines += ["", f"inference: answers of {inference['answer_tokens']} tokens with {inference['answer_targets']} masks, KV cache, prompt {inference['prompt_tokens']} tokens"]
        table = [["batch", "encode ms", "prefill ms", "TTFT ms", "decode tok/s", "masks ms", "peak GiB"]]
        for r in inference["rows"]:
            table.append([str(r["batch"]), _fmt(r["encode_ms"], 1), _fmt(r["prefill_ms"], 1), _fmt(r["time_to_first_token_ms"], 1),
                          _fmt(r["decode_tokens_per_s"], 1), _fmt(r["masks_ms"], 1), _fmt(r["peak_gib"])])
        lines.append(text_table(table))
    predictor = sections.get("predictor", {})
    if predictor.get("status") == "ok":
        h, w = predictor["image_hw"]
        lines.append(
            f"predictor, {w}x{h} image: start {predictor['start_ms']:.1f} ms, first token {predictor['time_to_first_token_ms']:.1f} ms, "
            f"{predictor['decode_ms_per_token']:.2f} ms/token, masks + answer {predictor['masks_and_answer_ms']:.1f} ms, reply {predictor['reply_ms']:.1f} ms"
        )
    equivalence = sections.get("equivalence", {})
    if equivalence.get("status") == "ok":
        lines += ["", f"equivalence ({equivalence['model']}, same weights, against {equivalence['reference']}):"]
        for name, r in equivalence["runs"].items():
            lines.append(
                f"  {name}: logits rel {r['logits']['rel_l2']:.4f} (max |d| {r['logits']['max_abs_diff']:.4f}), "
                f"mask logits rel {r['mask_logits']['rel_l2']:.4f} (max |d| {r['mask_logits']['max_abs_diff']:.4f})"
            )
        lines.append(f"  within the bf16 tolerance (rel {equivalence['tolerance_rel_l2']}): {'yes' if equivalence['within_tolerance'] else 'NO'}")
    lines.append("")
    lines.append("sections: " + ", ".join(f"{name} {r['status']}" + (f" ({r['seconds']} s)" if "seconds" in r else "") for name, r in sections.items()))
    for name, r in sections.items():
        if r["status"] != "ok":
            lines.append(f"  {name}: {r.get('error') or r.get('reason')}")
    if results["form"] != "full":
        lines.append("The GPU run is still to be made: these are tiny-form figures, not GPU figures (docs/gpu_check.md).")
    return "\n".join(lines)


def choose_form(tiny: bool, device: torch.device, llm_layers: int | None) -> CheckForm:
    if tiny or device.type != "cuda":
        if not tiny:
            print(f"DeepSpeed's accelerator is {device.type}, not CUDA: running the tiny form (no GPU figures)", flush=True)
        return TINY
    return replace(FULL, llm_layers=llm_layers)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny form (configs/models/tiny.json), also on a GPU")
    parser.add_argument("--budget_s", type=float, default=360.0, help="skip the sections that would start after this many seconds")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), help="of the training and inference sections (default: bf16 on CUDA, fp32 on the CPU, as the project's CPU runs use)")
    parser.add_argument("--llm_layers", type=int, help="full form: build this many LLM layers (memory extrapolated to the preset's)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", help="JSON file (default bench/results/gpu_check.json, gpu_check_tiny.json for the tiny form); the table goes beside it as .txt")
    args = parser.parse_args(argv)
    names = tuple(name.strip() for name in args.sections.split(",") if name.strip())
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}: choose from {', '.join(SECTIONS)}")

    def out_path(tiny: bool) -> Path:
        return Path(args.out) if args.out else RESULTS_DIR / ("gpu_check_tiny.json" if tiny else "gpu_check.json")

    try:
        dist = init_distributed()
    except Exception as err:
        # Nothing else can run without a process group; leave a file that says why.
        error = {"form": None, "error": f"init_distributed: {type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
        write_results(out_path(args.tiny or not torch.cuda.is_available()), error)
        raise
    seed_everything(0)
    form = choose_form(args.tiny, dist.device, args.llm_layers)
    out = out_path(form.name == "tiny")
    precision = args.precision or ("bf16" if dist.device.type == "cuda" else "fp32")
    check = GpuCheck(form, dist, precision, args.budget_s, out)
    results = check.run(names)
    print()
    print(format_report(results))
    return results


if __name__ == "__main__":
    main()
