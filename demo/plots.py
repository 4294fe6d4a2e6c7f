"""The demo's figures: learning curves of every stage, and example answers next to the ground truth."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from dataset.image_io import read_rgb
from dataset.multi_reason_seg import muse_image_path, question_masks, target_name
from serving.overlay import draw_overlay


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
    """Patch accuracy and mask IoU of the pretraining phases on ``ax``."""
    for tag, label in (("pretrain/vision/patch_acc", "vision phase: patch accuracy"),
                       ("pretrain/focus/iou", "focus phase: mask IoU"),
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
        question = textwrap.fill(f"Q: {answer['question']}", 48)
        ax_truth.set_title(f"{question}\nexpected: {len(anns)} target(s)", fontsize=9, loc="left")
        ax_answer.imshow(read_rgb(str(folder / f"{image_path.stem}_overlay.png")))
        reply = textwrap.fill(f"A: {answer['answer']}", 48)
        ax_answer.set_title(f"{reply}\nanswered: {len(answer['targets'])} mask(s)", fontsize=9, loc="left")
        for ax in (ax_truth, ax_answer):
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
