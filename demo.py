"""The embedded default (`make demo`): synthetic world -> tiny model -> train -> merge -> evaluate -> chat.

Every stage runs the same command-line tools a user runs on real data, on CPU here and on the GPU
where there is one:

1. `python -m dataset.synthetic`  writes the synthetic world in the real datasets' formats;
2. `python -m model.tiny`         builds a tiny random PixelLM whose tokenizer covers the world's text;
3. `python -m training.segmentation_pretraining` teaches its vision tower and decoder to segment named
                                     classes (a random LLM cannot yet give the decoder usable prompts);
4. `deepspeed train_ds.py`        trains PixelLM from there (DeepSpeed ZeRO-2 + LoRA, launched as on a GPU machine);
5. `merge_lora_weights_and_save_hf_model.py` merges LoRA into `runs/demo/hf_model`;
6. `train_ds.py --eval_only`      evaluates refer val (teacher-forced) and MUSE val, test_less and test_many
                                     (free generation);
7. `chat.py`                      answers a few validation questions and saves masks and overlays.

Results: `runs/demo/metrics.json`, `runs/demo/learning_curves.png`, `runs/demo/examples/`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def read_eval(path: Path) -> dict[str, dict[str, float]]:
    """{set name: {"giou", "ciou"}} from an eval-only run's metrics.json."""
    return {r["set"]: {"giou": r["giou"], "ciou": r["ciou"]} for r in json.loads(path.read_text())}


def plot_curves(train_dir: Path, out: Path) -> None:
    """Training losses per step and validation gIoU per epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(train_dir))
    events.Reload()
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    for tag in ("train/loss", "train/ce_loss", "train/bce_loss", "train/dice_loss"):
        if tag in events.Tags()["scalars"]:
            points = events.Scalars(tag)
            ax_loss.plot([p.step for p in points], [p.value for p in points], label=tag.split("/")[1])
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training loss")
    ax_loss.legend()
    records = json.loads((train_dir / "metrics.json").read_text()) if (train_dir / "metrics.json").exists() else []
    for name in sorted({r["set"] for r in records}):
        mine = [r for r in records if r["set"] == name]
        ax_iou.plot([r["epoch"] + 1 for r in mine], [r["giou"] for r in mine], marker="o", label=name)
    ax_iou.set_xlabel("epoch")
    ax_iou.set_title("validation gIoU")
    ax_iou.set_ylim(0, 1)
    ax_iou.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def write_examples(py: str, model: Path, world: Path, out: Path, count: int) -> Path:
    """Answer the first question with targets of the first ``count`` MUSE val images with chat.py, one folder each."""
    items = json.loads((world / "muse" / "muse_val.json").read_text())
    image_dir = world / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    asked = 0
    for item in items:
        question = next((q for q, answer in zip(item["questions"], item["answers"]) if answer), None)
        if question is None:
            continue
        run(f"7/7 chat, example {asked + 1}/{count}", [py, "chat.py", "--version", str(model), "--image", str(image_dir / item["file_name"]),
                                                      "--query", question, "--out_dir", str(out / f"{asked:02d}")])
        asked += 1
        if asked == count:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="where everything is written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_scenes", type=int, default=4000)
    parser.add_argument("--pretrain_steps", type=int, default=1500, help="segmentation pretraining steps (0: skip the stage)")
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--steps_per_epoch", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val_limit", type=int, default=100, help="validation images per set")
    parser.add_argument("--examples", type=int, default=4, help="MUSE val questions answered with chat.py into <out>/examples")
    args = parser.parse_args()

    out = Path(args.out)
    world, base, pretrained, merged = out / "data", out / "base_model", out / "pretrained_model", out / "hf_model"
    py = sys.executable
    run("1/7 synthetic world", [py, "-m", "dataset.synthetic", "--out", str(world), "--seed", str(args.seed),
                                 "--preset", "demo", "--train", str(args.train_scenes)])
    run("2/7 tiny model", [py, "-m", "model.tiny", "--out", str(base), "--seed", str(args.seed), "--corpus", str(world / "corpus.txt")])

    common = ["--dataset_dir", str(world), "--log_base_dir", str(out), "--precision", "fp32", "--seed", str(args.seed),
              "--val_limit", str(args.val_limit)]
    launcher = [py, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(free_port())]
    started = time.time()
    start_from, decoder_flag = base, ["--train_vision_tower"]
    if args.pretrain_steps:
        run("3/7 segmentation pretraining", [py, "-m", "training.segmentation_pretraining", "--version", str(base),
                                              "--dataset_dir", str(world), "--out", str(pretrained),
                                              "--steps", str(args.pretrain_steps), "--seed", str(args.seed)])
        # The pretrained vision tower and decoder stay as they are: trained further together with a
        # still-random LLM, they forget how to read prompts (refer val gIoU 0.18 instead of 0.52).
        start_from, decoder_flag = pretrained, ["--freeze_pixel_decoder"]
    run("4/7 train (DeepSpeed ZeRO-2 + LoRA)", launcher + [
        "train_ds.py", "--version", str(start_from), "--exp_name", "train",
        "--dataset", "refer_seg||multi_reason_seg||vqa", "--sample_rates", "6,3,1", "--refer_seg_data", "refcoco",
        "--epochs", str(args.epochs), "--steps_per_epoch", str(args.steps_per_epoch), "--batch_size", str(args.batch_size),
        "--grad_accumulation_steps", "1", "--lr", str(args.lr), "--warmup_steps", "50", *decoder_flag,
        "--torch_adam", "--workers", "0", "--val_dataset", f"{REFER_VAL}||{MUSE_VAL}", *common])
    train_seconds = time.time() - started

    run("5/7 merge LoRA", [py, "merge_lora_weights_and_save_hf_model.py", "--version", str(start_from),
                          "--weight", str(out / "train" / "ckpt_model"), "--save_path", str(merged), "--precision", "fp32",
                          *decoder_flag])
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
    plot_curves(out / "train", out / "learning_curves.png")

    examples = write_examples(py, merged, world, out / "examples", args.examples)
    print(f"\nmetrics: {json.dumps(metrics)}\nwritten: {out / 'metrics.json'}, {out / 'learning_curves.png'}, {examples}")


if __name__ == "__main__":
    main()
