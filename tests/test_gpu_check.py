"""bench/gpu_check.py: the tiny form runs every section end to end; the 7B preset builds at its estimated size;
failing sections are recorded and the time budget skips sections; fewer LLM layers are extrapolated."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.gpu_check import FULL, SECTIONS, TINY, GpuCheck
from bench.memory_estimate import TrainingSetup, lora_params, model_shape
from bench.random_pixellm import build_random_pixellm, preset_kwargs
from child_process import child_env
from model import PixelLMConfig
from training.args import TrainArgs
from training.distributed import DistInfo

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_tiny_form_runs_every_section_and_writes_json_and_table(tmp_path):
    out = tmp_path / "gpu_check_tiny.json"
    # Passive OpenMP threads: on a machine shared with other jobs, spinning ones slow DeepSpeed's steps many times over.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **child_env(threads=None), "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--out", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["form"] == "tiny" and results["settings"]["precision"] == "fp32"
    sections = results["sections"]
    assert list(sections) == list(SECTIONS)
    failed = {name: r.get("error") or r.get("reason") for name, r in sections.items() if r["status"] != "ok"}
    assert not failed, failed

    row_tokens = TINY.text_tokens + 64  # the tiny CLIP's 16 x 16 patches pooled 2 x 2
    for stage, ckpt in ((2, False), (2, True), (3, False), (3, True)):
        r = sections[f"train_zero{stage}" + ("_ckpt" if ckpt else "")]
        assert (r["zero_stage"], r["gradient_checkpointing"]) == (stage, ckpt)
        assert r["rows"] == TINY.micro_batch * TINY.rows_per_image and r["row_tokens"] == row_tokens
        assert len(r["step_s"]) == 1 + TINY.timed_steps and r["median_step_s"] > 0
        assert all(math.isfinite(x) and x > 0 for x in r["losses"])
        assert r["parameters"] == r["estimate_params_without_lora"]
        assert 0 < r["trainable_parameters"] < r["parameters"]
        assert r["estimate_no_scores_gib"] <= r["estimate_gib"]
        assert r["optimizer"] == "AdamW" and r["attention"]["language_model"] == "sdpa"
        assert r["peak_gib"] is None and r["measured_over_estimate"] is None  # no CUDA memory on the CPU
    assert sections["fused_adam"]["built"] is False

    inference = sections["inference"]
    assert [r["batch"] for r in inference["rows"]] == list(TINY.generate_batches)
    for r in inference["rows"]:
        assert r["llm_calls"] == TINY.answer_tokens  # one prefill, then one cached step per further token
        assert abs(r["time_to_first_token_ms"] - (r["encode_ms"] + r["prefill_ms"])) < 0.01
        assert r["decode_tokens_per_s"] > 0 and r["masks_ms"] > 0
    predictor = sections["predictor"]
    assert predictor["image_hw"] == list(TINY.predictor_image_hw)
    assert 0 < predictor["time_to_first_token_ms"] < predictor["reply_ms"]

    equivalence = sections["equivalence"]
    cpu_bf16 = equivalence["runs"]["bf16 on cpu"]
    # bf16 changed the numbers (so it ran), within what bf16 explains.
    assert 0 < cpu_bf16["logits"]["rel_l2"] < equivalence["tolerance_rel_l2"]
    assert 0 < cpu_bf16["mask_logits"]["rel_l2"] < equivalence["tolerance_rel_l2"]
    assert cpu_bf16["mask_logits"]["sign_agreement"] > 0.95 and equivalence["within_tolerance"]

    table = out.with_suffix(".txt").read_text()
    assert "ZeRO-3 + ckpt" in table and "The GPU run is still to be made" in table


def test_7b_preset_builds_with_the_estimated_parameter_count():
    built = build_random_pixellm("pixellm_7b", torch.device("meta"), torch.bfloat16)
    config = built.model.config
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers, config.text_config.num_attention_heads) == (4096, 32, 32)
    assert config.text_config.vocab_size == 32000 + config.tokens_per_target + 3
    assert (config.vision_config.hidden_size, config.image_size, config.vision_config.patch_size) == (1024, 448, 14)
    assert len(built.tokenizer) < config.text_config.vocab_size
    params = sum(p.numel() for p in built.model.parameters())
    estimate = model_shape(built.estimate_config, TrainingSetup()).params - lora_params(built.estimate_config, 8, ("q_proj", "v_proj"))
    assert params == estimate
    fewer = build_random_pixellm("pixellm_7b", torch.device("meta"), torch.bfloat16, llm_layers=8)
    assert fewer.model.config.text_config.num_hidden_layers == 8


def test_a_failing_section_is_recorded_and_the_budget_skips_the_rest(tmp_path):
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    form = replace(TINY, section_seconds=(("inference", 1e9),))
    check = GpuCheck(form, dist, "fp32", budget_s=60, out=tmp_path / "check.json")

    def broken() -> dict:
        raise RuntimeError("out of memory, say")

    check.equivalence = broken
    results = check.run(("equivalence", "environment", "inference"))
    sections = results["sections"]
    assert sections["equivalence"]["status"] == "error" and "out of memory, say" in sections["equivalence"]["error"]
    assert sections["environment"]["status"] == "ok"
    assert sections["inference"]["status"] == "skipped"
    written = json.loads((tmp_path / "check.json").read_text())
    assert written["sections"]["equivalence"]["status"] == "error"
    assert "equivalence: RuntimeError: out of memory, say" in (tmp_path / "check.txt").read_text()


def test_a_run_with_fewer_llm_layers_is_extrapolated_to_the_preset_with_the_estimate(tmp_path):
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    form = replace(FULL, llm_layers=8)
    check = GpuCheck(form, dist, "bf16", budget_s=60, out=tmp_path / "check.json")
    args = TrainArgs(version="random", batch_size=2, grad_accumulation_steps=1, gradient_checkpointing=True)
    eight = PixelLMConfig(**preset_kwargs("pixellm_7b", 8))
    out = check._estimates(eight, args, True, row_tokens=768, peak_gib=30.0)
    assert out["measured_over_estimate"] == round(30.0 / out["estimate_no_scores_gib"], 3)
    full = check._estimates(PixelLMConfig(**preset_kwargs("pixellm_7b")), args, True, row_tokens=768, peak_gib=30.0)
    assert "extrapolated" not in full
    extrapolated = out["extrapolated"]
    assert extrapolated["llm_layers"] == 32
    assert extrapolated["peak_gib"] == pytest.approx(30.0 + full["estimate_no_scores_gib"] - out["estimate_no_scores_gib"], abs=2e-3)
    assert extrapolated["peak_gib"] > 30.0
