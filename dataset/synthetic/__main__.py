"""Command line: write a synthetic dataset tree (see dataset/synthetic/writers.py for the layout)."""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = write_world(args.out, preset(args.preset), args.seed, args.train, args.val)
    summary = ", ".join(f"{k}={v}" for k, v in counts.items())
    print(f"wrote {args.out} ({args.preset}, seed {args.seed}) in {time.perf_counter() - start:.1f}s: {summary}")


if __name__ == "__main__":
    main()
