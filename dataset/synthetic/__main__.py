"""Command line: write a synthetic dataset tree (see dataset/synthetic/writers.py for the layout)."""

from __future__ import annotations

import argparse
import dataclasses
import time

from .config import PRESETS, preset
from .writers import write_world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataset.synthetic", description=__doc__)
    parser.add_argument("--out", required=True, help="folder to write the dataset tree into (used as --dataset_dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=500, help="training scenes")
    parser.add_argument("--val", type=int, default=50, help="scenes per evaluation split (val, test_less, test_many)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--train_no_target_rate", type=float, help="chance of a training question about each absent colour or kind (default: the preset's)")
    parser.add_argument("--train_combo_questions", action="store_true", help="also ask training questions about colour-and-kind groups")
    parser.add_argument("--vqa_presence_questions", action="store_true", help="VQA also asks whether a kind or a colour is there")
    args = parser.parse_args(argv)
    cfg = preset(args.preset)
    if args.train_no_target_rate is not None:
        cfg = dataclasses.replace(cfg, train_no_target_rate=args.train_no_target_rate)
    if args.train_combo_questions:
        cfg = dataclasses.replace(cfg, train_combo_questions=True)
    if args.vqa_presence_questions:
        cfg = dataclasses.replace(cfg, vqa_presence_questions=True)
    start = time.perf_counter()
    counts = write_world(args.out, cfg, args.seed, args.train, args.val)
    summary = ", ".join(f"{k}={v}" for k, v in counts.items())
    print(f"wrote {args.out} ({args.preset}, seed {args.seed}) in {time.perf_counter() - start:.1f}s: {summary}")


if __name__ == "__main__":
    main()
