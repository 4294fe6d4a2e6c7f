"""The tiny model actually learns: segmentation pretraining + a short train_ds.py run beat two baselines.

This is the check that model, data, losses and evaluation agree. A few hundred steps on the synthetic
world (demo preset) must lift teacher-forced refer val gIoU clearly above both the untrained model and
the "answer every expression with every object of its image" floor, which a model that learned where
objects are but not which one was asked scores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_fixtures import synthetic_world
from dataset.validation import build_val_dataset
from demo.segmentation_pretraining import PretrainArgs, pretrain_segmentation
from evaluation.baselines import every_object_baseline
from evaluation.evaluate import EvalOptions, evaluate
from model import PixelLMForCausalLM, PixelLMImageProcessor
from model.tokenization import load_tokenizer
from model.tokens import resolve_token_ids
from training.args import parse_train_args

REPO = Path(__file__).resolve().parent.parent
REFER_VAL = "refcoco|unc|val"
VAL_IMAGES = 30


def refer_val_giou(model_dir: Path, data: Path) -> float:
    model = PixelLMForCausalLM.from_pretrained(model_dir)
    tokenizer = load_tokenizer(model_dir)
    processor = PixelLMImageProcessor.from_pretrained(model_dir)
    token_ids = resolve_token_ids(tokenizer, model.config.tokens_per_target)
    val_set = build_val_dataset(REFER_VAL, str(data), tokenizer, processor, token_ids, model.config.num_image_tokens, 512)
    return evaluate(model, val_set, torch.device("cpu"), EvalOptions(batch_size=8, limit=VAL_IMAGES))["giou"]


@pytest.mark.slow
def test_pretraining_then_train_ds_beats_untrained_and_every_object(tmp_path, deepspeed_env):
    from training.trainer import train

    world = synthetic_world(tmp_path, train=400, val=12)
    data, tiny = world["data"], world["tiny"]
    pretrained = tmp_path / "pretrained"
    pretrain_segmentation(PretrainArgs(version=str(tiny), dataset_dir=str(data), out=str(pretrained), dataset="sem_seg||refer_seg",
                                       sample_rates="1,3", sem_seg_data="ade20k", refer_seg_data="refcoco", vision_steps=500, steps=600,
                                       batch_size=8, lr=1e-3, warmup_steps=50, precision="fp32", workers=0, device="cpu"))
    argv = [
        "--version", str(pretrained), "--dataset_dir", str(data), "--log_base_dir", str(tmp_path / "runs"), "--exp_name", "learn",
        "--dataset", "refer_seg||multi_reason_seg", "--sample_rates", "2,1", "--refer_seg_data", "refcoco",
        "--epochs", "1", "--steps_per_epoch", "400", "--batch_size", "8", "--grad_accumulation_steps", "1",
        "--lr", "1e-3", "--warmup_steps", "30", "--lora_r", "0", "--train_llm", "--freeze_pixel_decoder",
        "--precision", "fp32", "--torch_adam", "--workers", "0", "--no_eval",
    ]
    train(parse_train_args(argv))
    ckpt = tmp_path / "runs" / "learn" / "ckpt_model"
    merged = tmp_path / "merged"
    subprocess.run(
        [sys.executable, "merge_lora_weights_and_save_hf_model.py", "--weight", str(ckpt), "--save_path", str(merged), "--precision", "fp32"],
        cwd=REPO, check=True, capture_output=True,
    )

    untrained = refer_val_giou(tiny, data)
    trained = refer_val_giou(merged, data)
    config = PixelLMForCausalLM.config_class.from_pretrained(tiny)
    tokenizer = load_tokenizer(tiny)
    val_set = build_val_dataset(REFER_VAL, str(data), tokenizer, PixelLMImageProcessor.from_pretrained(tiny),
                                resolve_token_ids(tokenizer, config.tokens_per_target), config.num_image_tokens, 512)
    floor = every_object_baseline(val_set, VAL_IMAGES)["giou"]
    print(f"refer val gIoU: untrained {untrained:.3f}, every object {floor:.3f}, trained {trained:.3f}")
    assert trained > untrained + 0.2
    assert trained > floor + 0.08
