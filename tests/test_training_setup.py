"""Training set-up without a training run: flags, DeepSpeed config, model loading, LoRA groups, checkpoint files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cli import build_parser
from model.precision import dtype_of
from model.tiny import build_tiny
from training.args import ModelArgs, TrainArgs, parse_train_args
from training.checkpoint import LATEST, read_latest, resolve_checkpoint, write_text_atomic
from training.determinism import set_deterministic
from training.ds_config import build_ds_config
from training.freeze_policy import TrainScope, prepare_trainable, trainable_summary
from training.merge import build_merge_parser
from training.run_log import RunLog
from training.run_settings import resolve_settings, settings_record

ORIGINAL_FLAGS = (
    "--version --vision-tower --dataset_dir --dataset --sample_rates --sem_seg_data --refer_seg_data --vqa_data "
    "--reason_seg_data --multi_reason_seg_data --exp_name --log_base_dir --epochs --steps_per_epoch --batch_size "
    "--grad_accumulation_steps --lr --beta1 --beta2 --precision --lora_r --lora_alpha --lora_dropout "
    "--lora_target_modules --seg_token_num --image_feature_scale_num --num_classes_per_sample "
    "--num_classes_per_question --use_expand_question_list --model_max_length --val_dataset --val_batch_size "
    "--eval_only --no_eval --auto_resume --resume --weight --ce_loss_weight --dice_loss_weight --bce_loss_weight "
    "--workers --print_freq --local_rank --zero_stage --gradient_checkpointing --save_steps --seed "
    "--train_vision_tower --warmup_steps --torch_adam"
).split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny_setup") / "tiny", seed=0)


def args_for(version: str | Path, *extra: str) -> TrainArgs:
    return parse_train_args(["--version", str(version), "--precision", "fp32", *extra])


def load_model(args: TrainArgs):
    return args.load(dtype_of(args.precision))


def test_parser_has_every_original_flag():
    options = set(build_parser(TrainArgs, "train")._option_string_actions)
    assert [f for f in ORIGINAL_FLAGS if f not in options] == []


def test_parse_values_and_launcher_local_rank():
    args = parse_train_args(["--version", "m", "--vision-tower", "clip", "--zero_stage", "3", "--local_rank=1", "--torch_adam"])
    assert (args.vision_tower, args.zero_stage, args.local_rank, args.torch_adam) == ("clip", 3, 1, True)
    assert args.lora_targets == ("q_proj", "v_proj")
    assert args.run_dir.endswith("runs/pixellm")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval_only", "--no_eval"], "contradict"),
        (["--auto_resume", "--resume", "x"], "not both"),
        (["--batch_size", "0"], "--batch_size=0"),
        (["--lora_target_modules", " , "], "lora_target_modules"),
    ],
)
def test_bad_flag_combinations_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_train_args(["--version", "m", *argv])


def test_ds_config_overrides_the_base_file():
    args = parse_train_args(
        ["--version", "m", "--batch_size", "3", "--grad_accumulation_steps", "4", "--lr", "1e-3", "--beta2", "0.99",
         "--epochs", "2", "--steps_per_epoch", "7", "--warmup_steps", "5", "--precision", "fp32"]
    )
    config = build_ds_config(args, world_size=2, accelerator="cuda")
    assert config["train_micro_batch_size_per_gpu"] == 3 and config["gradient_accumulation_steps"] == 4
    assert config["train_batch_size"] == 24
    assert config["optimizer"]["params"]["lr"] == 1e-3 and config["optimizer"]["params"]["betas"] == [0.9, 0.99]
    assert config["optimizer"]["params"]["torch_adam"] is False
    sched = config["scheduler"]["params"]
    assert (sched["total_num_steps"], sched["warmup_num_steps"], sched["warmup_max_lr"]) == (14, 5, 1e-3)
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
    assert config["zero_optimization"]["stage"] == 2 and config["gradient_clipping"] == 1.0


def test_ds_config_stage3_cpu_and_fp16():
    args = parse_train_args(["--version", "m", "--zero_stage", "3"])
    config = build_ds_config(args, world_size=1, accelerator="cpu")
    assert config["zero_optimization"]["stage"] == 3
    assert "stage3_prefetch_bucket_size" in config["zero_optimization"]
    assert config["optimizer"]["params"]["torch_adam"] is True
    assert config["bf16"]["enabled"] is True
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        build_ds_config(parse_train_args(["--version", "m", "--precision", "fp16"]), world_size=1, accelerator="cpu")
    assert build_ds_config(parse_train_args(["--version", "m", "--precision", "fp16"]), 1, "cuda")["fp16"]["enabled"] is True


def test_set_deterministic_makes_the_indexing_backward_bit_identical(monkeypatch):
    # The op behind CPU runs that differ: ImageFeatures.select (features[index]) adds the gradients of repeated
    # indices with atomic adds from several threads; here image 0's rows straddle the split between two threads.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    threads_before = torch.get_num_threads()
    fill_before = torch.utils.deterministic.fill_uninitialized_memory
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 2, 64, 16, 16, generator=generator, requires_grad=True)  # [images, L, D, g, g]
    index = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    weights = torch.randn(8, 2, 64, 16, 16, generator=generator)

    def gradient() -> torch.Tensor:
        features.grad = None
        (features[index] * weights).sum().backward()
        return features.grad.clone()

    torch.set_num_threads(max(2, threads_before))
    try:
        assert set_deterministic(torch.device("cpu")) == max(2, threads_before)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        first = gradient()
        assert all(torch.equal(gradient(), first) for _ in range(20))
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.utils.deterministic.fill_uninitialized_memory = fill_before
        torch.set_num_threads(threads_before)


def test_load_base_model_checks_flags_against_the_folder(tiny_dir):
    model, tokenizer, processor = load_model(args_for(tiny_dir, "--dice_loss_weight", "0.25"))
    assert model.config.dice_loss_weight == 0.25 and model.config.bce_loss_weight == 2.0
    assert processor.image_size == model.config.image_size
    with pytest.raises(ValueError, match="seg_token_num=2 was asked for, but .*config.json has seg_token_num=3"):
        load_model(args_for(tiny_dir, "--seg_token_num", "2"))
    with pytest.raises(FileNotFoundError, match="config.json not found: expected a model folder"):
        load_model(args_for(tiny_dir / "missing"))


def test_load_base_model_refuses_a_tokenizer_with_another_k(tiny_dir, tmp_path):
    model, tokenizer, _ = load_model(args_for(tiny_dir))
    tokenizer.add_tokens(["[SEG6]"], special_tokens=True)
    folder = tmp_path / "bad"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text((tiny_dir / "preprocessor_config.json").read_text())
    with pytest.raises(ValueError, match="more seg tokens than K = 6"):
        load_model(args_for(folder))


def test_lora_only_inside_the_llm_and_trainable_groups(tiny_dir):
    model, _, _ = load_model(args_for(tiny_dir))
    wrapped = prepare_trainable(model, TrainScope())
    lora = [n for n, _ in wrapped.named_parameters() if "lora_" in n]
    # CLIP also has q_proj/v_proj layers: they must not get LoRA.
    assert lora and all(".language_model." in n for n in lora)
    assert all(p.requires_grad for n, p in wrapped.named_parameters() if "lora_" in n)
    summary = trainable_summary(wrapped)
    for group in ("embed_tokens", "lm_head", "mm_projector", "out_mm_projector", "image_feature_neck", "seg_codebook", "pixel_decoder"):
        trainable, total = summary[group]
        assert trainable == total > 0, group
    assert summary["vision_tower"][0] == 0 and summary["language_model"][0] == 0
    assert summary["total"][0] == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)

    model2, _, _ = load_model(args_for(tiny_dir))
    with_clip = prepare_trainable(model2, TrainScope(lora_r=0, train_vision_tower=True))
    summary2 = trainable_summary(with_clip)
    assert "lora" not in summary2 and summary2["vision_tower"][0] == summary2["vision_tower"][1] > 0


def test_train_llm_and_freeze_pixel_decoder(tiny_dir):
    model, _, _ = load_model(args_for(tiny_dir))
    summary = trainable_summary(prepare_trainable(model, TrainScope(lora_r=0, train_llm=True, freeze_pixel_decoder=True)))
    assert summary["language_model"][0] == summary["language_model"][1] > 0
    for group in ("out_mm_projector", "image_feature_neck", "pixel_decoder", "vision_tower"):
        assert summary[group][0] == 0, group
    for group in ("mm_projector", "seg_codebook", "embed_tokens", "lm_head"):
        assert summary[group][0] == summary[group][1] > 0, group
    with pytest.raises(ValueError, match="--train_llm trains the whole LLM"):
        prepare_trainable(load_model(args_for(tiny_dir))[0], TrainScope(lora_r=8, train_llm=True))
    with pytest.raises(ValueError, match="--lora_r 0"):
        parse_train_args(["--version", str(tiny_dir), "--train_llm"])


def test_lora_targets_that_match_nothing_are_refused(tiny_dir):
    model, _, _ = load_model(args_for(tiny_dir))
    with pytest.raises(ValueError, match="found none of"):
        prepare_trainable(model, TrainScope(lora_target_modules="no_such_layer"))


def test_latest_is_replaced_atomically_and_validated(tmp_path):
    ckpt = tmp_path / "ckpt_model"
    (ckpt / "global_step2").mkdir(parents=True)
    torch.save({}, ckpt / "global_step2" / "mp_rank_00_model_states.pt")
    assert read_latest(ckpt) is None
    write_text_atomic(ckpt / LATEST, "global_step2")
    assert read_latest(ckpt) == "global_step2"
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".")] == []
    assert resolve_checkpoint(ckpt) == (ckpt, "global_step2")
    assert resolve_checkpoint(ckpt / "global_step2") == (ckpt, "global_step2")
    write_text_atomic(ckpt / LATEST, "global_step9")
    with pytest.raises(FileNotFoundError, match="global_step9"):
        read_latest(ckpt)


def test_run_log_writes_metrics_json(tmp_path):
    log = RunLog(tmp_path / "run", active=True)
    log.validation("ReasonSeg|val", {"giou": 0.5, "ciou": 0.25, "pairs": 4.0}, epoch=0, global_step=3)
    log.validation("ReasonSeg|val", {"giou": 0.75, "ciou": 0.5, "pairs": 4.0}, epoch=0, global_step=3)
    log.close()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == [{"epoch": 0, "global_step": 3, "set": "ReasonSeg|val", "giou": 0.75, "ciou": 0.5, "pairs": 4.0}]
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_merge_needs_only_the_checkpoint_and_checks_the_flags_given(tmp_path):
    parsed = vars(build_merge_parser("merge").parse_args(["--weight", "w", "--save_path", "o"]))
    assert parsed == {"weight": "w", "save_path": "o", "precision": "bf16"}  # training flags not given stay absent
    parsed = vars(build_merge_parser("merge").parse_args(["--weight", "w", "--save_path", "o", "--lora_r", "4", "--train_llm"]))
    assert parsed["lora_r"] == 4 and parsed["train_llm"] is True

    base = tmp_path / "base"
    base.mkdir()
    ckpt = tmp_path / "ckpt_model"
    ckpt.mkdir()
    (ckpt / "run_settings.json").write_text(json.dumps(settings_record(ModelArgs(version=str(base)), TrainScope(lora_r=0, train_llm=True))))
    model_args, scope = resolve_settings(ckpt, {})
    assert model_args.version == str(base) and scope == TrainScope(lora_r=0, train_llm=True)
    assert resolve_settings(ckpt / "global_step3", {"lora_r": 0})[1].train_llm  # a tag folder finds its checkpoint's settings
    with pytest.raises(ValueError, match="--lora_r 8 disagrees with .*run_settings.json.*lora_r=0"):
        resolve_settings(ckpt, {"lora_r": 8})
    with pytest.raises(ValueError, match="--version .* disagrees"):
        resolve_settings(ckpt, {"version": str(tmp_path)})
    with pytest.raises(ValueError, match="carries no run_settings.json.*pass --version"):
        resolve_settings(tmp_path / "weights.bin", {})
    assert resolve_settings(tmp_path / "weights.bin", {"version": "v", "lora_r": 4}) == (ModelArgs(version="v"), TrainScope(lora_r=4))


def test_loading_weights_checks_lora_shape_and_trained_keys(tiny_dir):
    from training.weights import load_trained_weights

    model, _, _ = load_model(args_for(tiny_dir))
    trained = prepare_trainable(model, TrainScope(lora_r=8))
    state = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}

    other, _, _ = load_model(args_for(tiny_dir))
    with pytest.raises(ValueError, match="does not fit the rebuilt model"):
        load_trained_weights(prepare_trainable(other, TrainScope(lora_r=4)), state, "ckpt")

    same, _, _ = load_model(args_for(tiny_dir))
    target = prepare_trainable(same, TrainScope(lora_r=8))
    without_decoder = {k: v for k, v in state.items() if ".pixel_decoder." not in k}
    with pytest.raises(ValueError, match="lacks .* trained parameters"):
        load_trained_weights(target, without_decoder, "ckpt")
    load_trained_weights(target, state, "ckpt")
    assert all(torch.equal(p, state[n]) for n, p in target.named_parameters() if n in state)
