"""Train (or, with --eval_only, evaluate) PixelLM with DeepSpeed.

One process (GPU or CPU):  python train_ds.py --version MODEL_DIR --dataset_dir DATA ...
Several GPUs / nodes:      deepspeed [--num_gpus N | --hostfile FILE] train_ds.py --version ...
                           (torchrun --nproc_per_node N train_ds.py ... works too)

Flags: ``python train_ds.py --help``; launch recipes, resume and merge: docs/training.md.
"""

from training.args import parse_train_args
from training.trainer import train


def main() -> None:
    args = parse_train_args()
    train(args)


if __name__ == "__main__":
    main()
