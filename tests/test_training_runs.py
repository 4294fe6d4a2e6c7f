"""Real training runs of a tiny PixelLM on the synthetic world, on the CPU with gloo.

In-process: ZeRO-2 and ZeRO-3 runs through ``training.trainer.train``. Subprocesses (``train_ds.py``,
``torchrun``, the merge script): two-rank training; with ``--deterministic`` on two threads, a second run
of the same seed and a SIGKILL + ``--auto_resume`` run giving bit-identical weights; merge -> load ->
identical masks, ``--eval_only`` on the merged folder.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from child_process import child_env
from data_fixtures import synthetic_world
from dataset.multi_reason_seg import load_muse
from dataset.validation import build_val_dataset
from demo.recipe import read_eval
from model import PixelLMForCausalLM
from model.tokens import resolve_token_ids
from training.args import ModelArgs, parse_train_args
from training.checkpoint import LATEST, read_latest
from training.distributed import free_port
from training.freeze_policy import TrainScope, prepare_trainable
from training.merge import MergeArgs, merge_lora_checkpoint
from training.weights import load_state_dict_any, load_trained_weights

REPO = Path(__file__).resolve().parent.parent
DATA_FLAGS = [
    "--dataset", "sem_seg||refer_seg||vqa||reason_seg||multi_reason_seg", "--sample_rates", "1,2,1,1,2",
    "--sem_seg_data", "ade20k", "--refer_seg_data", "refcoco", "--multi_reason_seg_data", "MultiReasonSeg|train",
]
FAST_FLAGS = ["--precision", "fp32", "--torch_adam", "--workers", "0", "--batch_size", "2", "--max_new_tokens", "16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic dataset tree and a tiny model whose tokenizer was trained on its corpus."""
    return synthetic_world(tmp_path_factory.mktemp("train_world"), train=16, val=3)


def run_args(world: dict[str, Path], exp: str, *extra: str) -> list[str]:
    return [
        "--version", str(world["tiny"]), "--dataset_dir", str(world["data"]), "--log_base_dir", str(world["root"] / "runs"),
        "--exp_name", exp, *DATA_FLAGS, *FAST_FLAGS, *extra,
    ]


def tag_dirs(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("global_step"))


# -- in-process ZeRO-2 / ZeRO-3 -------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_checkpoints_and_merges(world, deepspeed_env, stage, tmp_path):
    from training.trainer import train

    exp = f"zero{stage}"
    argv = run_args(world, exp, "--zero_stage", str(stage), "--epochs", "1", "--steps_per_epoch", "3",
                    "--grad_accumulation_steps", "1", "--warmup_steps", "1", "--lr", "1e-2", "--no_eval")
    result = train(parse_train_args(argv))
    assert result["global_step"] == 3
    ckpt = world["root"] / "runs" / exp / "ckpt_model"
    assert read_latest(ckpt) == "global_step3" and tag_dirs(ckpt) == ["global_step3"]
    assert read_latest(world["root"] / "runs" / exp / "best_ckpt_model") == "global_step3"

    trained = load_state_dict_any(ckpt)
    lora_b = [v for k, v in trained.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero
    assert not any(".vision_tower." in k for k in trained)  # frozen: not stored
    base = PixelLMForCausalLM.from_pretrained(world["tiny"])
    key = "base_model.model.pixel_decoder." + next(n for n, _ in base.pixel_decoder.named_parameters())
    assert not torch.equal(trained[key], dict(base.named_parameters())[key.removeprefix("base_model.model.")])

    # The checkpoint carries the run's settings: the merge needs nothing else.
    out = merge_lora_checkpoint(MergeArgs(weight=str(ckpt), save_path=str(tmp_path / "merged"), precision="fp32"))
    merged = PixelLMForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    frozen_clip = dict(base.vision_tower.named_parameters())
    assert all(torch.equal(p, frozen_clip[n]) for n, p in merged.vision_tower.named_parameters())


# -- subprocess runs ----------------------------------------------------------------------------------------
RESUME_FLAGS = [
    "--epochs", "2", "--steps_per_epoch", "4", "--grad_accumulation_steps", "2", "--save_steps", "1", "--warmup_steps", "2",
    "--lora_dropout", "0.3", "--val_dataset", "ReasonSeg|val", "--val_limit", "2", "--deterministic",
]
# Without --deterministic, two runs of these flags on two threads differ by up to a few 1e-6 in their weights.
DETERMINISTIC_THREADS = 2


def deterministic_run(world: dict[str, Path], exp: str) -> Path:
    """An uninterrupted 8-step ``--deterministic`` run on two threads (2 epochs, validation after each)."""
    proc = subprocess.run(
        [sys.executable, "train_ds.py", *run_args(world, exp, *RESUME_FLAGS)],
        cwd=REPO, env=child_env(DETERMINISTIC_THREADS), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"deterministic algorithms on, {DETERMINISTIC_THREADS} intra-op threads" in proc.stderr
    return world["root"] / "runs" / exp


@pytest.fixture(scope="module")
def reference_run(world) -> Path:
    return deterministic_run(world, "reference")


def assert_bit_identical(run: Path, reference: Path) -> None:
    """Same checkpoint weights, bit for bit, and the same validation results."""
    expected = load_state_dict_any(reference / "ckpt_model")
    got = load_state_dict_any(run / "ckpt_model")
    assert got.keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    reference_metrics = json.loads((reference / "metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["global_step"] for m in metrics] == [m["global_step"] for m in reference_metrics] == [4, 8]
    assert metrics == reference_metrics


@pytest.mark.slow
def test_deterministic_runs_of_one_seed_are_bit_identical(world, reference_run):
    assert_bit_identical(deterministic_run(world, "again"), reference_run)


@pytest.mark.slow
def test_sigkill_then_auto_resume_reproduces_the_uninterrupted_run(world, reference_run):
    argv = [sys.executable, "train_ds.py", *run_args(world, "killed", *RESUME_FLAGS)]
    ckpt = world["root"] / "runs" / "killed" / "ckpt_model"
    env = child_env(DETERMINISTIC_THREADS)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            latest = (ckpt / LATEST).read_text() if (ckpt / LATEST).is_file() else ""
            if latest and int(latest.removeprefix("global_step")) >= 3:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = int(read_latest(ckpt).removeprefix("global_step"))
    assert 3 <= killed_at < 8
    # A save cut short after the last good one: a tag folder that `latest` does not name.
    partial = ckpt / f"global_step{killed_at + 1}"
    partial.mkdir(exist_ok=True)
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"truncated")

    resumed = subprocess.run([*argv, "--auto_resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpt}/global_step{killed_at} at global step {killed_at}" in resumed.stderr
    assert "intra-op threads, this run has" not in resumed.stderr
    assert read_latest(ckpt) == "global_step8" and tag_dirs(ckpt) == ["global_step8"]
    assert_bit_identical(ckpt.parent, reference_run)


@pytest.mark.slow
def test_two_process_training_with_torchrun(world):
    torchrun = Path(sys.executable).with_name("torchrun")
    argv = [
        str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "train_ds.py",
        *run_args(world, "two_ranks", "--epochs", "1", "--steps_per_epoch", "2", "--grad_accumulation_steps", "1",
                  "--val_dataset", "ReasonSeg|val||MultiReasonSeg|val", "--val_limit", "2"),
    ]
    proc = subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = world["root"] / "runs" / "two_ranks"
    tag = run / "ckpt_model" / "global_step2"
    assert sorted(p.name for p in tag.glob("zero_pp_rank_*")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    ]
    assert "micro batch 2 x accumulation 1 x 2 ranks" in proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(m["set"] for m in metrics) == ["MultiReasonSeg|val", "ReasonSeg|val"]
    # 2 images per set, split over the ranks, summed back: every image counted once.
    assert all(m["items"] == 2.0 for m in metrics)


@pytest.mark.slow
def test_merge_gives_the_unmerged_masks_and_eval_only_reports_them(world, reference_run, tmp_path):
    merged_dir = tmp_path / "merged"
    proc = subprocess.run(
        [sys.executable, "merge_lora_weights_and_save_hf_model.py",
         "--weight", str(reference_run / "ckpt_model"), "--save_path", str(merged_dir), "--precision", "fp32"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in merged_dir.iterdir()}

    base, tokenizer, processor = ModelArgs(version=str(world["tiny"])).load(torch.float32)
    unmerged = prepare_trainable(base, TrainScope())
    load_trained_weights(unmerged, load_state_dict_any(reference_run / "ckpt_model"), "reference")
    unmerged.eval()
    merged = PixelLMForCausalLM.from_pretrained(merged_dir).eval()
    token_ids = resolve_token_ids(tokenizer, merged.config.tokens_per_target)

    val = build_val_dataset("ReasonSeg|val", str(world["data"]), tokenizer, processor, token_ids, merged.config.num_image_tokens)
    batch = val.collate_fn([val[0], val[1]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "clip_resize", "offset", "original_sizes")}
    with torch.no_grad():
        a, b = unmerged(**inputs), merged(**inputs)
    for ma, mb in zip(a.pred_masks, b.pred_masks):
        assert torch.allclose(ma, mb, atol=1e-4)
        assert torch.equal(ma > 0, mb > 0)

    muse = build_val_dataset("MultiReasonSeg|val", str(world["data"]), tokenizer, processor, token_ids, merged.config.num_image_tokens)
    prompt = muse.collate_fn([muse[0]])
    gen_inputs = {k: prompt[k][:1] for k in ("input_ids", "attention_mask")}
    images = {k: prompt[k] for k in ("pixel_values", "clip_resize", "original_sizes")}
    ga = unmerged.get_base_model().generate_with_masks(**gen_inputs, **images, max_new_tokens=24)
    gb = merged.generate_with_masks(**gen_inputs, **images, max_new_tokens=24)
    assert ga.sequences == gb.sequences
    for ma, mb in zip(ga.pred_masks, gb.pred_masks):
        assert torch.equal(ma > 0, mb > 0)

    evaluated = subprocess.run(
        [sys.executable, "train_ds.py", "--eval_only", "--version", str(merged_dir), "--dataset_dir", str(world["data"]),
         "--val_dataset", "ReasonSeg|val||MultiReasonSeg|val", "--val_limit", "2", "--max_new_tokens", "16", "--precision", "fp32",
         "--workers", "0", "--log_base_dir", str(tmp_path / "runs"), "--exp_name", "eval"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    reason_line, muse_line, mean_line = evaluated.stdout.strip().splitlines()[-3:]
    assert re.fullmatch(r"gIoU=\d\.\d{4} cIoU=\d\.\d{4} \(mean of 2 sets\)", mean_line), evaluated.stdout
    match = re.match(r"ReasonSeg\|val: gIoU=(\d\.\d{4}) cIoU=(\d\.\d{4}) ", reason_line)
    assert match, evaluated.stdout
    trained = json.loads((reference_run / "metrics.json").read_text())[-1]
    assert float(match.group(1)) == pytest.approx(trained["giou"], abs=1e-3)
    assert float(match.group(2)) == pytest.approx(trained["ciou"], abs=1e-3)
    lines = (tmp_path / "runs" / "eval" / "eval" / "ReasonSeg_val_step0.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1]

    # MUSE: the target counts are printed and written next to gIoU / cIoU, and the demo reads them.
    no_target_question = any(not answer for item in load_muse(str(world["data"]), "val")[:2] for answer in item["answers"])
    assert muse_line.startswith("MultiReasonSeg|val: gIoU=") and "count_acc=" in muse_line
    assert ("no_target_acc=" in muse_line) == no_target_question
    records = {r["set"]: r for r in json.loads((tmp_path / "runs" / "eval" / "metrics.json").read_text())}
    muse = records["MultiReasonSeg|val"]
    assert muse["questions"] >= 2 and 0.0 <= muse["count_acc"] <= 1.0
    assert ("no_target_acc" in muse) == no_target_question
    assert "count_acc" not in records["ReasonSeg|val"]
    demo_entry = read_eval(tmp_path / "runs" / "eval" / "metrics.json")["MultiReasonSeg|val"]
    assert demo_entry == {name: muse.get(name) for name in ("giou", "ciou", "no_target_acc", "count_acc", "invented_share")}
