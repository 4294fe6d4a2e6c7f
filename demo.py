"""The embedded default (`make demo`): synthetic world -> tiny model -> train -> merge -> evaluate -> chat.

Every stage runs the same command-line tools a user runs on real data, on CPU here and on the GPU
where there is one:

1. `python -m dataset.synthetic`  writes the synthetic world in the real datasets' formats;
2. `python -m model.tiny`         builds a tiny random PixelLM whose tokenizer covers the world's text;
3. `python -m training.segmentation_pretraining` gives it what CLIP and LLaVA give the real model: its
                                     vision tower learns shapes and colours, its decoder learns to segment named
                                     targets (a random LLM cannot yet give the decoder usable prompts);
4. `deepspeed train_ds.py --train_llm --freeze_pixel_decoder` trains the whole (random) LLM to read the
                                     image and the question and to prompt the pretrained decoder (DeepSpeed
                                     ZeRO-2, launched as on a GPU machine): referring-heavy epochs first
                                     (single targets), then a second run from their checkpoint (`--weight`)
                                     on a MUSE-heavy mix; merged into `runs/demo/llm_model`;
5. `deepspeed train_ds.py`        the PixelLM recipe proper from there: LoRA on the LLM, decoder trained too,
                                     at a lower learning rate; merged into `runs/demo/hf_model`;
6. `train_ds.py --eval_only`      evaluates refer val (teacher-forced) and MUSE val, test_less and test_many
                                     (free generation);
7. `chat.py`                      answers a few validation questions and saves masks and overlays;
                                     `examples/overview.png` sets them next to the ground truth.

Results: `runs/demo/metrics.json` (per split gIoU, cIoU, no_target_acc, count_acc, invented_share; see
docs/evaluation.md), `runs/demo/learning_curves.png`, `runs/demo/examples/`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dataset.image_io import read_rgb
from dataset.multi_reason_seg import load_muse, muse_image_path, question_masks, target_name
from evaluation.metrics import TARGET_METRICS
from serving.overlay import draw_overlay
from training.distributed import free_port

REFER_VAL = "refcoco|unc|val"
MUSE_VAL = "MultiReasonSeg|val"
MUSE_TESTS = ("MultiReasonSeg|test_less", "MultiReasonSeg|test_many")


def run(stage: str, cmd: list[str]) -> None:
    """Run one stage, streaming its output; stop the demo with the stage's name if it fails."""
    print(f"\n=== {stage}\n$ {' '.join(cmd)}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if subprocess.run(cmd, env=env).returncode != 0:
        sys.exit(f"demo: the stage '{stage}' failed (command above)")


def read_eval(path: Path) -> dict[str, dict[str, float | None]]:
    """{set name: {"giou", "ciou", "no_target_acc", "count_acc", "invented_share"}} from an eval-only run's metrics.json.

    A target metric the set does not define (``evaluation.metrics``) is None, e.g. count_acc of the teacher-forced refer set.
    """
    return {r["set"]: {name: r.get(name) for name in ("giou", "ciou", *TARGET_METRICS)} for r in json.loads(path.read_text())}


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _smooth(points: list[tuple[int, float]], window: int) -> tuple[list[int], list[float]]:
    """(steps, trailing mean of the last ``window`` values at each point)."""
    steps, values = zip(*points)
    sums = np.cumsum([0.0, *values])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return list(steps), list((sums[ends] - sums[starts]) / (ends - starts))


def _plot_pretraining(ax, pre: dict[str, list[tuple[int, float]]]) -> None:
    """Patch accuracy and mask IoU of both pretraining phases on ``ax``."""
    for tag, label in (("pretrain/vision/patch_acc", "vision phase: patch accuracy"),
                       ("pretrain/segmentation/patch_acc", "segmentation phase: patch accuracy"),
                       ("pretrain/segmentation/iou", "segmentation phase: mask IoU")):
        if tag in pre:
            ax.plot(*_smooth(pre[tag], 5), label=label)
    ax.set_xlabel("step")
    ax.set_title("segmentation pretraining (mean of 50 steps)")
    ax.set_ylim(0, 1)
    ax.legend()


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported late: only the demo's last stages draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(pretrain_dir: Path, train_dirs: list[Path], out: Path) -> None:
    """One PNG: segmentation pretraining (when ``pretrain_dir`` holds its log), train_ds losses (per step) and validation gIoU of consecutive train_ds runs."""
    plt = _pyplot()
    pre = _scalars(pretrain_dir) if pretrain_dir.is_dir() else {}
    if pre:
        fig, (ax_pre, ax_loss, ax_iou) = plt.subplots(1, 3, figsize=(16, 4))
        _plot_pretraining(ax_pre, pre)
    else:
        fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))

    offset, colours = 0, {}
    for run_dir in train_dirs:
        scalars, last = _scalars(run_dir), 0
        for tag in ("train/loss", "train/ce_loss", "train/bce_loss", "train/dice_loss"):
            if tag in scalars:
                name = tag.split("/")[1]
                steps, values = _smooth(scalars[tag], 20)
                line, = ax_loss.plot([offset + s for s in steps], values, color=colours.get(name), label=None if name in colours else name)
                colours[name] = line.get_color()
                last = max(last, steps[-1])
        records = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else []
        for name in sorted({r["set"] for r in records}):
            mine = [r for r in records if r["set"] == name]
            line, = ax_iou.plot([offset + r["global_step"] for r in mine], [r["giou"] for r in mine], marker="o",
                                color=colours.get(name), label=None if name in colours else name)
            colours[name] = line.get_color()
            last = max(last, mine[-1]["global_step"])
        if offset:
            for ax in (ax_loss, ax_iou):
                ax.axvline(offset, color="grey", linestyle=":", linewidth=1)
        offset += last
    ax_loss.set_xlabel("train_ds step (one run after another, dotted lines between runs)")
    ax_loss.set_title("train_ds loss (mean of 20 steps)")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_iou.set_xlabel("train_ds step")
    ax_iou.set_title("validation gIoU")
    ax_iou.set_ylim(0, 1)
    ax_iou.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def first_question_with_targets(item: dict) -> int | None:
    """Index of the first question of a MUSE item whose answer names at least one target, or None."""
    return next((q for q, answer in enumerate(item["answers"]) if answer), None)


def write_examples(py: str, model: Path, world: Path, out: Path, count: int) -> Path:
    """Answer the first question with targets of the first ``count`` MUSE val images with chat.py, one folder each.

    Then ``out/overview.png`` sets each question's expected targets next to the model's answer.
    """
    examples = []
    for item in load_muse(str(world), "val"):
        q = first_question_with_targets(item)
        if q is None:
            continue
        folder = out / f"{len(examples):02d}"
        run(f"7/7 chat, example {len(examples) + 1}/{count}", [py, "chat.py", "--version", str(model), "--image",
                                                             muse_image_path(str(world), item), "--query", item["questions"][q],
                                                             "--out_dir", str(folder)])
        examples.append((item, q, folder))
        if len(examples) == count:
            break
    write_overview(world, examples, out / "overview.png")
    return out


def write_overview(world: Path, examples: list[tuple[dict, int, Path]], out: Path) -> None:
    """One PNG, a row per example: the image with question ``q``'s ground-truth targets, then chat.py's overlay.

    examples: (MUSE item, question index, the folder chat.py wrote that question's answer into).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(examples), 2, figsize=(9, 3.6 * len(examples)), squeeze=False)
    for (item, q, folder), (ax_truth, ax_answer) in zip(examples, axes):
        image_path = Path(muse_image_path(str(world), item))
        image = read_rgb(str(image_path))
        anns = item["answers"][q]
        truth = draw_overlay(image, question_masks(anns, image.shape[0], image.shape[1]), [target_name(a, None) for a in anns])
        answer_json = folder / f"{image_path.stem}.json"
        if not answer_json.is_file():
            raise FileNotFoundError(f"{answer_json} is missing: chat.py --image {image_path} --out_dir {folder} writes it")
        answer = json.loads(answer_json.read_text())
        ax_truth.imshow(truth)
        ax_truth.set_title(f"Q: {answer['question']}\nexpected: {len(anns)} target(s)", fontsize=9, loc="left")
        ax_answer.imshow(read_rgb(str(folder / f"{image_path.stem}_overlay.png")))
        ax_answer.set_title(f"A: {answer['answer']}\nanswered: {len(answer['targets'])} mask(s)", fontsize=9, loc="left", wrap=True)
        for ax in (ax_truth, ax_answer):
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="where everything is written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_scenes", type=int, default=4000)
    parser.add_argument("--vision_steps", type=int, default=3000, help="vision phase of segmentation pretraining")
    parser.add_argument("--pretrain_steps", type=int, default=1500, help="segmentation phase of segmentation pretraining")
    parser.add_argument("--refer_epochs", type=int, default=2, help="referring-heavy epochs at the start of stage 4 (0: none)")
    parser.add_argument("--refer_sample_rates", default="6,3,1", help="refer_seg, multi_reason_seg, vqa of those epochs")
    parser.add_argument("--llm_epochs", type=int, default=4, help="epochs of stage 4 at --sample_rates (whole LLM, decoder frozen)")
    parser.add_argument("--lora_epochs", type=int, default=1, help="epochs of stage 5 (LoRA, decoder trained; 0: skip)")
    parser.add_argument("--steps_per_epoch", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of stage 4")
    parser.add_argument("--lora_lr", type=float, default=3e-4, help="peak learning rate of stage 5")
    parser.add_argument("--sample_rates", default="3,5,2", help="refer_seg, multi_reason_seg, vqa")
    parser.add_argument("--val_limit", type=int, default=100, help="validation images per set")
    parser.add_argument("--examples", type=int, default=6, help="MUSE val questions answered with chat.py into <out>/examples")
    args = parser.parse_args()

    out = Path(args.out)
    world, base, pretrained = out / "data", out / "base_model", out / "pretrained_model"
    llm_model, merged = out / "llm_model", out / "hf_model"
    py = sys.executable
    run("1/7 synthetic world", [py, "-m", "dataset.synthetic", "--out", str(world), "--seed", str(args.seed),
                                 "--preset", "demo", "--train", str(args.train_scenes)])
    run("2/7 tiny model", [py, "-m", "model.tiny", "--out", str(base), "--seed", str(args.seed), "--corpus", str(world / "corpus.txt")])

    common = ["--dataset_dir", str(world), "--log_base_dir", str(out), "--precision", "fp32", "--seed", str(args.seed),
              "--val_limit", str(args.val_limit)]
    train = ["train_ds.py", "--dataset", "refer_seg||multi_reason_seg||vqa", "--refer_seg_data", "refcoco", "--steps_per_epoch", str(args.steps_per_epoch), "--batch_size", str(args.batch_size),
             "--grad_accumulation_steps", "1", "--warmup_steps", "50", "--torch_adam", "--workers", "0",
             "--val_dataset", f"{REFER_VAL}||{MUSE_VAL}", *common]

    def launcher() -> list[str]:
        return [py, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(free_port())]

    started = time.time()
    run("3/7 segmentation pretraining", [py, "-m", "training.segmentation_pretraining", "--version", str(base),
                                          "--dataset_dir", str(world), "--out", str(pretrained), "--dataset", "sem_seg||refer_seg",
                                          "--sample_rates", "1,3", "--vision_steps", str(args.vision_steps),
                                          "--steps", str(args.pretrain_steps), "--seed", str(args.seed),
                                          "--log_dir", str(out / "pretrain")])
    # The pretrained vision tower and decoder stay as they are while the LLM is random: trained together
    # with it, they forget how to read prompts (refer val gIoU 0.18 instead of 0.52).
    llm_flags = ["--train_llm", "--lora_r", "0", "--freeze_pixel_decoder"]
    llm_stage = [*train, "--version", str(pretrained), "--lr", str(args.lr), *llm_flags]
    train_dirs = []
    if args.refer_epochs:
        # Single targets first: the LLM learns to name one target and prompt the decoder for it before
        # MUSE asks for several (refer val gIoU 0.74 after these 800 steps; 0.67 after 1,200 at 3:5:2).
        run("4/7 train the LLM on referring first (DeepSpeed ZeRO-2)",
            launcher() + [*llm_stage, "--exp_name", "train_llm_refer", "--epochs", str(args.refer_epochs),
                          "--sample_rates", args.refer_sample_rates])
        train_dirs.append(out / "train_llm_refer")
        llm_stage += ["--weight", str(out / "train_llm_refer" / "ckpt_model")]
    run("4/7 train the LLM (DeepSpeed ZeRO-2)", launcher() + [*llm_stage, "--exp_name", "train_llm", "--epochs", str(args.llm_epochs),
                                                              "--sample_rates", args.sample_rates])
    run("4/7 merge", [py, "merge_lora_weights_and_save_hf_model.py", "--version", str(pretrained), "--weight",
                      str(out / "train_llm" / "ckpt_model"), "--save_path", str(llm_model), "--precision", "fp32", *llm_flags])
    train_dirs.append(out / "train_llm")
    if args.lora_epochs:
        run("5/7 train PixelLM (DeepSpeed ZeRO-2 + LoRA)", launcher() + [*train, "--version", str(llm_model), "--exp_name", "train_lora",
                                                                         "--epochs", str(args.lora_epochs), "--lr", str(args.lora_lr),
                                                                         "--sample_rates", args.sample_rates])
        run("5/7 merge LoRA", [py, "merge_lora_weights_and_save_hf_model.py", "--version", str(llm_model), "--weight",
                               str(out / "train_lora" / "ckpt_model"), "--save_path", str(merged), "--precision", "fp32"])
        train_dirs.append(out / "train_lora")
    else:
        merged = llm_model
    train_seconds = time.time() - started

    every_split = "||".join((REFER_VAL, MUSE_VAL, *MUSE_TESTS))
    run("6/7 evaluate", [py, "train_ds.py", "--eval_only", "--version", str(merged), "--exp_name", "eval", "--workers", "0",
                         "--val_dataset", every_split, *common])
    results = read_eval(out / "eval" / "metrics.json")
    metrics = {
        "synthetic_refer_val": results[REFER_VAL],
        "synthetic_muse_val": results[MUSE_VAL],
        **{f"synthetic_muse_{name.split('|')[1]}": results[name] for name in MUSE_TESTS},
        "train_seconds": round(train_seconds, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves(out / "pretrain", train_dirs, out / "learning_curves.png")

    examples = write_examples(py, merged, world, out / "examples", args.examples)
    print(f"\nmetrics: {json.dumps(metrics)}\nwritten: {out / 'metrics.json'}, {out / 'learning_curves.png'}, {examples}")


if __name__ == "__main__":
    main()
