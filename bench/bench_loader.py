"""Samples per second of the mixed training loader on the synthetic world, with 0 and 2 DataLoader workers.

Writes a synthetic world (``--train`` scenes, full preset) into a temporary folder unless
``--dataset_dir`` is given, trains the tiny tokenizer on its corpus, and times a DataLoader over
``HybridDataset`` (the README mix ``sem_seg||refer_seg||vqa||multi_reason_seg`` at ``2,9,2,4``,
``num_classes_per_question=3``) with the Collator at the real 448-px CLIP input and 256 image tokens.
Each run discards its first batch (worker start-up) and times the rest.

Run: ``python -m bench.bench_loader``. Prints a table and writes ``bench/results/loader.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from torch.utils.data import DataLoader

from dataset.collate import Collator
from dataset.mix import DataArgs, HybridDataset
from dataset.sampler import GlobalIndexSampler
from dataset.synthetic import preset, write_world
from model.processing_pixellm import PixelLMImageProcessor
from model.tiny_tokenizer import train_tiny_tokenizer

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "loader.json"


def time_loader(dataset: HybridDataset, collator: Collator, workers: int, batches: int, batch_size: int) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collator,
                        sampler=GlobalIndexSampler((batches + 1) * batch_size))
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    conversations = 0
    for batch in it:
        conversations += batch["input_ids"].shape[0]
    elapsed = time.perf_counter() - start
    samples = batches * batch_size
    return {"workers": workers, "samples": samples, "seconds": round(elapsed, 3),
            "samples_per_s": round(samples / elapsed, 1), "conversations_per_s": round(conversations / elapsed, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", help="an existing dataset tree (default: a fresh synthetic world)")
    parser.add_argument("--train", type=int, default=300, help="training scenes of the generated world")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default=str(RESULTS_FILE))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataset_dir or os.path.join(tmp, "world")
        if not args.dataset_dir:
            write_world(root, preset("full"), seed=0, n_train=args.train, n_val=10)
        with open(os.path.join(root, "corpus.txt")) as f:
            tokenizer, ids = train_tiny_tokenizer(f.read().splitlines(), 6)
        data_args = DataArgs(dataset_dir=root, dataset="sem_seg||refer_seg||vqa||multi_reason_seg", sample_rates="2,9,2,4",
                             sem_seg_data="ade20k", refer_seg_data="refcoco", num_classes_per_question=3)
        dataset = HybridDataset(data_args, PixelLMImageProcessor(image_size=448), ids.tokens_per_target)
        collator = Collator(tokenizer, ids, num_image_tokens=256, model_max_length=1024)
        rows = [time_loader(dataset, collator, w, args.batches, args.batch_size) for w in args.workers]

    print(f"{'workers':>7} {'samples':>7} {'seconds':>8} {'samples/s':>10} {'convs/s':>8}")
    for r in rows:
        print(f"{r['workers']:>7} {r['samples']:>7} {r['seconds']:>8.2f} {r['samples_per_s']:>10.1f} {r['conversations_per_s']:>8.1f}")
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus", "batch_size": args.batch_size,
              "mix": data_args.dataset, "sample_rates": data_args.sample_rates, "image_size": 448, "runs": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
