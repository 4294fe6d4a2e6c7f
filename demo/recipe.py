"""The demo's recipe as a list of named stages, each a command line a user could run, and their running.

``demo_stages(settings)`` reads top to bottom as the recipe (``demo/__init__.py`` explains each step);
``run_stages`` runs them in order, prints before each one how long it should take from what the stages so far
measured (a running ETA), and stops with the stage's name when one fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cli import flag
from dataset.multi_reason_seg import load_muse, muse_image_path, muse_question
from dataset.synthetic.language import POSITIONS
from dataset.templates import load_templates
from evaluation.metrics import TARGET_METRICS
from model.tiny import DECODING_RULES
from training.distributed import free_port

REFER_VAL = "refcoco|unc|val"
MUSE_VAL = "MultiReasonSeg|val"
MUSE_TESTS = ("MultiReasonSeg|test_less", "MultiReasonSeg|test_many")
# Seconds per unit of work on the machine the README's figures come from (2-core CPU, docs/training.md);
# the ETA scales them by how fast the stages run so far. The LLM and LoRA steps are the 2-layer LLM's costs of
# that day times 1.20 and 1.23, the 4-layer/2-layer step ratios measured side by side; the vision and mask steps
# carry the patch position loss's 1.04 and 1.05 (docs/training.md).
REFERENCE_SECONDS = {
    "scene": 0.004,
    "setup": 15.0,
    "vision_step": 0.070,
    "mask_step": 0.21,
    "focus_step": 0.18,
    "llm_step": 0.26,
    "lora_step": 0.34,
    "val_image": 0.12,
    "answer": 4.0,
}


@dataclass
class DemoSettings:
    """The flags of ``python -m demo``."""

    out: str = flag("runs/demo", "where everything is written")
    seed: int = flag(0, "seed of the world, the model and every run")
    train_scenes: int = flag(4000, "training scenes of the synthetic world")
    llm_layers: int = flag(4, "decoder layers of the tiny LLM")
    no_repeat_target_ngram_size: int = flag(3, "the model's decoding rule: never name a target twice, a name being this many "
                                                "tokens before a seg group (0: off; model/target_repeat_ban.py)")
    min_target_confidence: float = flag(0.9, "the model's decoding rule: withdraw a target whose mask's confidence is under "
                                             "this (0: off; model/target_confidence.py)")
    answer_candidates: int = flag(6, "the model's decoding rule: answer each question this many times and keep the answer "
                                     "whose targets they agree on (1: greedy only; model/answer_candidates.py)")
    candidate_temperature: float = flag(1.0, "temperature of the sampled answer candidates")
    candidate_min_confidence: float = flag(0.9, "mask confidence from which a candidate's mask is a target")
    candidate_vote_share: float = flag(0.4, "a target named by more than this share of the candidates counts for an answer")
    candidate_add_votes: int = flag(2, "a kept answer that names a target also gets each target this many candidates name (0: off)")
    train_no_target_rate: float = flag(0.15, "chance of a training MUSE question about each absent colour or kind")
    train_combo_questions: bool = flag(False, "also ask training MUSE questions about colour-and-kind groups")
    vqa_presence_questions: bool = flag(False, "VQA also asks whether a kind or a colour is there (docs/training.md)")
    image_token_loss_weight: float = flag(0.0, "weight of the image-token alignment loss of segmentation pretraining")
    patch_position_loss_weight: float = flag(1.0, "weight of the patch position loss of segmentation pretraining (0: off)")
    vision_steps: int = flag(3000, "vision phase of segmentation pretraining")
    focus_steps: int = flag(400, "focus phase of segmentation pretraining: referring expressions by position only (0: none)")
    pretrain_steps: int = flag(1000, "segmentation phase of segmentation pretraining")
    pretrain_lr: float = flag(1e-3, "peak learning rate of segmentation pretraining")
    refer_epochs: int = flag(1, "referring-heavy epochs at the start of the LLM stage (0: none)")
    refer_sample_rates: str = flag("6,3,1", "refer_seg, multi_reason_seg, vqa of those epochs")
    llm_epochs: int = flag(5, "epochs of the LLM stage at --sample_rates (whole LLM, decoder frozen)")
    lora_epochs: int = flag(1, "epochs of the LoRA stage (decoder trained too; 0: skip)")
    steps_per_epoch: int = flag(400, "optimizer steps per epoch of every train_ds.py run")
    batch_size: int = flag(8, "images per step")
    lr: float = flag(1e-3, "peak learning rate of the LLM stage")
    lora_lr: float = flag(3e-4, "peak learning rate of the LoRA stage")
    sample_rates: str = flag("3,5,2", "refer_seg, multi_reason_seg, vqa")
    val_limit: int = flag(100, "validation images per set")
    examples: int = flag(6, "MUSE val questions answered with chat.py into <out>/examples")


@dataclass
class Stage:
    """One step of the recipe: its command lines (built when it starts: a stage may read what earlier ones
    wrote), and how much work of each kind they do (for the ETA)."""

    name: str
    commands: Callable[[], list[list[str]]]
    work: dict[str, float] = field(default_factory=dict)
    training: bool = False

    def expected_seconds(self, seconds_per_unit: dict[str, float]) -> float:
        return sum(units * seconds_per_unit[kind] for kind, units in self.work.items())


class Paths:
    """Where the demo writes each of its artefacts, below ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.world, self.base, self.pretrained = out / "data", out / "base_model", out / "pretrained_model"
        self.llm_model, self.final = out / "llm_model", out / "hf_model"

    def run(self, name: str) -> Path:
        """The folder of the train_ds.py run ``name`` (its logs, checkpoints and metrics)."""
        return self.out / name


def demo_stages(s: DemoSettings, paths: Paths) -> list[Stage]:
    """The recipe: synthetic world, tiny model, segmentation pretraining, LLM, PixelLM (LoRA), evaluation, examples."""
    py = sys.executable

    def launcher() -> list[str]:
        return [py, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(free_port())]

    common = ["--dataset_dir", str(paths.world), "--log_base_dir", str(paths.out), "--precision", "fp32", "--seed", str(s.seed),
              "--val_limit", str(s.val_limit), "--workers", "0"]
    train = ["train_ds.py", "--dataset", "refer_seg||multi_reason_seg||vqa", "--refer_seg_data", "refcoco",
             "--steps_per_epoch", str(s.steps_per_epoch), "--batch_size", str(s.batch_size), "--grad_accumulation_steps", "1",
             "--warmup_steps", "50", "--torch_adam", "--val_dataset", f"{REFER_VAL}||{MUSE_VAL}", *common]
    # A random LLM cannot prompt a decoder that is still learning: the pretrained vision tower and decoder side stay
    # frozen while the whole LLM learns (docs/training.md).
    llm = [*train, "--version", str(paths.pretrained), "--lr", str(s.lr), "--train_llm", "--lora_r", "0", "--freeze_pixel_decoder"]
    val_images = 2 * s.val_limit

    def llm_run(name: str, epochs: int, rates: str, extra: list[str]) -> Stage:
        return Stage(name, lambda: [launcher() + [*llm, "--exp_name", paths.run(name).name, "--epochs", str(epochs), "--sample_rates", rates, *extra]],
                     {"setup": 1, "llm_step": epochs * s.steps_per_epoch, "val_image": epochs * val_images}, training=True)

    stages = [
        Stage("synthetic world", lambda: [[py, "-m", "dataset.synthetic", "--out", str(paths.world), "--seed", str(s.seed), "--preset", "demo",
                                           "--train", str(s.train_scenes), "--train_no_target_rate", str(s.train_no_target_rate),
                                           *(["--train_combo_questions"] if s.train_combo_questions else []),
                                           *(["--vqa_presence_questions"] if s.vqa_presence_questions else [])]], {"scene": s.train_scenes}),
        Stage("tiny model", lambda: [[py, "-m", "model.tiny", "--out", str(paths.base), "--seed", str(s.seed),
                              "--corpus", str(paths.world / "corpus.txt"), "--llm_layers", str(s.llm_layers),
                              *(f"--{rule}={getattr(s, rule)}" for rule in DECODING_RULES)]], {"setup": 0.5}),
        Stage("segmentation pretraining", lambda: [[py, "-m", "demo.segmentation_pretraining", "--version", str(paths.base),
                                            "--dataset_dir", str(paths.world), "--out", str(paths.pretrained),
                                            "--dataset", "sem_seg||refer_seg", "--sem_seg_data", "ade20k", "--refer_seg_data", "refcoco",
                                            "--sample_rates", "1,3", "--vision_steps", str(s.vision_steps), "--steps", str(s.pretrain_steps),
                                            "--focus_steps", str(s.focus_steps), "--focus_words", ",".join(word for word, *_ in POSITIONS),
                                            "--batch_size", str(s.batch_size), "--lr", str(s.pretrain_lr), "--warmup_steps", "50",
                                            "--precision", "fp32", "--workers", "0", "--seed", str(s.seed),
                                            "--image_token_loss_weight", str(s.image_token_loss_weight),
                                            "--patch_position_loss_weight", str(s.patch_position_loss_weight), "--log_dir", str(paths.out / "pretrain")]],
              {"setup": 0.5, "vision_step": s.vision_steps, "focus_step": s.focus_steps, "mask_step": s.pretrain_steps}, training=True),
    ]
    weight: list[str] = []
    if s.refer_epochs:
        # Single targets first: the LLM learns to name one target and prompt the decoder before MUSE asks for several.
        stages.append(llm_run("train_llm_refer", s.refer_epochs, s.refer_sample_rates, []))
        weight = ["--weight", str(paths.run("train_llm_refer") / "ckpt_model")]
    stages.append(llm_run("train_llm", s.llm_epochs, s.sample_rates, weight))
    stages.append(Stage("merge the LLM", lambda: [[py, "merge_lora_weights_and_save_hf_model.py", "--weight", str(paths.run("train_llm") / "ckpt_model"),
                                           "--save_path", str(paths.llm_model), "--precision", "fp32"]], {"setup": 0.5}, training=True))
    if s.lora_epochs:
        stages.append(Stage("train PixelLM with LoRA", lambda: [launcher() + [*train, "--version", str(paths.llm_model), "--exp_name", "train_lora",
                                                                    "--epochs", str(s.lora_epochs), "--lr", str(s.lora_lr),
                                                                    "--sample_rates", s.sample_rates]],
                            {"setup": 1, "lora_step": s.lora_epochs * s.steps_per_epoch, "val_image": s.lora_epochs * val_images},
                            training=True))
        stages.append(Stage("merge LoRA", lambda: [[py, "merge_lora_weights_and_save_hf_model.py", "--weight", str(paths.run("train_lora") / "ckpt_model"),
                                            "--save_path", str(paths.final), "--precision", "fp32"]], {"setup": 0.5}, training=True))
    final = final_model(s, paths)
    every_split = "||".join((REFER_VAL, MUSE_VAL, *MUSE_TESTS))
    stages.append(Stage("evaluate", lambda: [[py, "train_ds.py", "--eval_only", "--version", str(final), "--exp_name", "eval",
                                      "--val_dataset", every_split, *common]], {"setup": 0.5, "val_image": 4 * s.val_limit}))
    stages.append(Stage("examples", lambda: [
        [py, "chat.py", "--version", str(final), "--image", muse_image_path(str(paths.world), item), "--query", example_question(item, q),
         "--out_dir", str(folder)]
        for item, q, folder in examples(paths, s.examples)
    ], {"answer": s.examples}))
    return stages


def final_model(s: DemoSettings, paths: Paths) -> Path:
    """The folder the demo evaluates and chats with: the LoRA stage's merge, or the LLM stage's without one."""
    return paths.final if s.lora_epochs else paths.llm_model


def examples(paths: Paths, count: int) -> list[tuple[dict, int, Path]]:
    """(MUSE item, question index, answer folder) of the first question with targets of the first ``count`` MUSE val
    images that have one; chat.py writes each answer into its folder."""
    out = []
    for item in load_muse(str(paths.world), "val"):
        q = first_question_with_targets(item)
        if q is not None:
            out.append((item, q, paths.out / "examples" / f"{len(out):02d}"))
        if len(out) == count:
            break
    return out


def example_question(item: dict, q: int) -> str:
    """Question ``q`` of a MUSE item as the examples ask it: worded as evaluation asks it, with the training
    templates' request for masks, so the examples show the model the metrics measure."""
    return muse_question(item["questions"][q], load_templates())


def first_question_with_targets(item: dict) -> int | None:
    """Index of the first question of a MUSE item whose answer names at least one target, or None."""
    return next((q for q, answer in enumerate(item["answers"]) if answer), None)


@dataclass
class Eta:
    """Expected durations: REFERENCE_SECONDS scaled by how much slower or faster the finished stages ran.

    The reference speed counts as ``prior_seconds`` of work already measured, so a stage of a few seconds
    (writing the world, building the tiny model) does not set the speed of the half-hour that follows: on the
    2-core machines of 2026-12-05 the world's 16 reference seconds ran in 8, which alone halved every ETA after it.
    """

    measured: float = 0.0
    expected_so_far: float = 0.0
    prior_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.prior_seconds <= 0:
            raise ValueError(f"Eta.prior_seconds must be > 0 (the weight of the reference speed), got {self.prior_seconds}")

    @property
    def speed(self) -> float:
        """Measured seconds per reference second, the reference speed (1.0) weighing as ``prior_seconds``."""
        return (self.measured + self.prior_seconds) / (self.expected_so_far + self.prior_seconds)

    def seconds(self, stage: Stage) -> float:
        return stage.expected_seconds(REFERENCE_SECONDS) * self.speed

    def record(self, stage: Stage, seconds: float) -> None:
        self.measured += seconds
        self.expected_so_far += stage.expected_seconds(REFERENCE_SECONDS)


def run_stages(stages: list[Stage]) -> dict[str, float]:
    """Run every stage in order, printing its expected duration and the ETA of the whole demo first; returns
    {stage name: seconds}."""
    eta, seconds = Eta(), {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for i, stage in enumerate(stages):
        left = sum(eta.seconds(s) for s in stages[i:])
        print(f"\n=== {i + 1}/{len(stages)} {stage.name}: expected {minutes(eta.seconds(stage))}, "
              f"the rest of the demo {minutes(left)}", flush=True)
        started = time.time()
        for command in stage.commands():
            print(f"$ {' '.join(command)}", flush=True)
            if subprocess.run(command, env=env).returncode != 0:
                sys.exit(f"demo: the stage '{stage.name}' failed (command above)")
        seconds[stage.name] = time.time() - started
        eta.record(stage, seconds[stage.name])
        print(f"=== {stage.name}: {minutes(seconds[stage.name])}", flush=True)
    return seconds


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def read_eval(path: Path) -> dict[str, dict[str, float | None]]:
    """{set name: {"giou", "ciou", "no_target_acc", "count_acc", "invented_share"}} from an eval-only run's metrics.json.

    A target metric the set does not define (``evaluation.metrics``) is None, e.g. count_acc of the teacher-forced refer set.
    """
    return {r["set"]: {name: r.get(name) for name in ("giou", "ciou", *TARGET_METRICS)} for r in json.loads(path.read_text())}


def demo_metrics(eval_metrics: Path, seconds: dict[str, float], stages: list[Stage]) -> dict:
    """runs/demo/metrics.json: every split's metrics, training seconds, and each stage's seconds."""
    results = read_eval(eval_metrics)
    return {
        "synthetic_refer_val": results[REFER_VAL],
        "synthetic_muse_val": results[MUSE_VAL],
        **{f"synthetic_muse_{name.split('|')[1]}": results[name] for name in MUSE_TESTS},
        "train_seconds": round(sum(seconds[s.name] for s in stages if s.training), 1),
        "stage_seconds": {name: round(value, 1) for name, value in seconds.items()},
    }
