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
7. `chat.py`                      answers one question on a validation image and saves its masks.

Results: `runs/demo/metrics.json`, `runs/demo/learning_curves.png`, `runs/demo/chat/`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REFER_VAL = "refcoco|unc|val"
MUSE_VAL = "MultiReasonSeg|val"
MUSE_TESTS = ("MultiReasonSeg|test_less", "MultiReasonSeg|test_many")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="where everything is written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_scenes", type=int, default=2000)
    parser.add_argument("--pretrain_steps", type=int, default=800, help="segmentation pretraining steps (0: skip the stage)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps_per_epoch", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val_limit", type=int, default=100, help="validation images per set")
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
    start_from = base
    if args.pretrain_steps:
        run("3/7 segmentation pretraining", [py, "-m", "training.segmentation_pretraining", "--version", str(base),
                                              "--dataset_dir", str(world), "--out", str(pretrained),
                                              "--steps", str(args.pretrain_steps), "--seed", str(args.seed)])
        start_from = pretrained
    run("4/7 train (DeepSpeed ZeRO-2 + LoRA)", launcher + [
        "train_ds.py", "--version", str(start_from), "--exp_name", "train",
        "--dataset", "refer_seg||multi_reason_seg||vqa", "--sample_rates", "6,3,1", "--refer_seg_data", "refcoco",
        "--epochs", str(args.epochs), "--steps_per_epoch", str(args.steps_per_epoch), "--batch_size", str(args.batch_size),
        "--grad_accumulation_steps", "1", "--lr", str(args.lr), "--warmup_steps", "50", "--train_vision_tower",
        "--torch_adam", "--workers", "0", "--val_dataset", f"{REFER_VAL}||{MUSE_VAL}", *common])
    train_seconds = time.time() - started

    run("5/7 merge LoRA", [py, "merge_lora_weights_and_save_hf_model.py", "--version", str(start_from),
                          "--weight", str(out / "train" / "ckpt_model"), "--save_path", str(merged), "--precision", "fp32"])
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

    muse_val = json.loads((world / "muse" / "muse_val.json").read_text())[0]
    image = world / "refer_seg" / "images" / "mscoco" / "images" / "train2014" / muse_val["file_name"]
    run("7/7 chat", [py, "chat.py", "--version", str(merged), "--image", str(image),
                     "--query", muse_val["questions"][0], "--out_dir", str(out / "chat")])
    print(f"\nmetrics: {json.dumps(metrics)}\nwritten: {out / 'metrics.json'}, {out / 'learning_curves.png'}, {out / 'chat'}")


if __name__ == "__main__":
    main()
