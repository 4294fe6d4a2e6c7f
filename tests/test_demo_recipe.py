"""demo.recipe: the stages of the embedded default and their running ETA."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.recipe import REFERENCE_SECONDS, DemoSettings, Eta, Paths, Stage, demo_stages, example_question, minutes


def test_eta_scales_the_reference_costs_by_the_measured_speed():
    first, second = Stage("a", lambda: [], {"llm_step": 100}), Stage("b", lambda: [], {"llm_step": 300, "setup": 1})
    eta = Eta()
    assert eta.seconds(second) == pytest.approx(300 * REFERENCE_SECONDS["llm_step"] + REFERENCE_SECONDS["setup"])
    eta.record(first, 2 * 100 * REFERENCE_SECONDS["llm_step"])  # this machine runs at half the reference speed
    first_work = 100 * REFERENCE_SECONDS["llm_step"]
    speed = (2 * first_work + eta.prior_seconds) / (first_work + eta.prior_seconds)
    assert eta.speed == pytest.approx(speed) and 1.2 < speed < 2.0
    assert eta.seconds(second) == pytest.approx(speed * (300 * REFERENCE_SECONDS["llm_step"] + REFERENCE_SECONDS["setup"]))
    eta.record(second, 2 * second.expected_seconds(REFERENCE_SECONDS))
    assert speed < eta.speed < 2.0  # the more work measured, the nearer the measured speed
    assert minutes(90) == "1.5 min" and minutes(42) == "42 s"


def test_a_few_fast_seconds_do_not_halve_the_eta():
    world, pretraining = Stage("world", lambda: [], {"scene": 4000}), Stage("pretraining", lambda: [], {"vision_step": 3000, "mask_step": 1000})
    eta = Eta()
    eta.record(world, world.expected_seconds(REFERENCE_SECONDS) / 2)  # 16 s of reference work done in 8
    assert eta.seconds(pretraining) > 0.85 * pretraining.expected_seconds(REFERENCE_SECONDS)


def test_stages_chain_their_outputs(tmp_path: Path):
    settings = DemoSettings(out=str(tmp_path))
    paths = Paths(tmp_path)
    stages = demo_stages(settings, paths)
    names = [s.name for s in stages]
    assert names == ["synthetic world", "tiny model", "segmentation pretraining", "train_llm_refer", "train_llm", "merge the LLM",
                     "train PixelLM with LoRA", "merge LoRA", "evaluate", "examples"]
    commands = {s.name: s.commands() for s in stages if s.name != "examples"}
    pretraining = commands["segmentation pretraining"][0]
    assert str(paths.pretrained) in pretraining
    assert pretraining[pretraining.index("--patch_position_loss_weight") + 1] == "1.0"  # the tower keeps patch positions (docs/training.md)
    # the decoder learns to pick the extreme of a set from expressions by position alone first (docs/training.md)
    assert pretraining[pretraining.index("--focus_steps") + 1] == "400"
    assert set(pretraining[pretraining.index("--focus_words") + 1].split(",")) == {"leftmost", "rightmost", "topmost", "bottommost"}
    tiny = commands["tiny model"][0]
    # the model folder carries the decoding rules to chat and evaluation: no target named twice, weak targets withdrawn,
    # the answer of 6 whose targets they agree on, with the targets two of them agree on added (docs/training.md)
    for rule in ("--no_repeat_target_ngram_size=3", "--min_target_confidence=0.9", "--answer_candidates=6",
                 "--candidate_temperature=1.0", "--candidate_min_confidence=0.9", "--candidate_vote_share=0.4", "--candidate_add_votes=2"):
        assert rule in tiny
    assert tiny[tiny.index("--llm_layers") + 1] == "4"  # answers MUSE questions better than 2 layers (docs/training.md)
    assert ["--weight", str(paths.run("train_llm_refer") / "ckpt_model")] == commands["train_llm"][0][-2:]
    merge = commands["merge the LLM"][0]
    assert "--version" not in merge and merge[merge.index("--save_path") + 1] == str(paths.llm_model)  # the checkpoint carries its settings
    assert all(s.work and all(kind in REFERENCE_SECONDS for kind in s.work) for s in stages)
    assert [s.name for s in stages if s.training] == names[2:8]
    assert [s.name for s in demo_stages(DemoSettings(out=str(tmp_path), refer_epochs=0, lora_epochs=0), paths)][3:5] == ["train_llm", "merge the LLM"]
    assert "--vqa_presence_questions" not in commands["synthetic world"][0]
    presence = demo_stages(DemoSettings(out=str(tmp_path), vqa_presence_questions=True), paths)[0].commands()[0]
    assert "--vqa_presence_questions" in presence


def test_examples_ask_the_question_as_evaluation_does():
    item = {"questions": ["Which shapes are red?", " Find each star in the image. "]}
    assert example_question(item, 1) == "Find each star in the image. Please respond with segmentation mask."
    assert example_question(item, 0) == "Which shapes are red? Please respond with segmentation mask."
