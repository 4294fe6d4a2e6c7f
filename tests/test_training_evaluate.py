"""evaluation.evaluate: left padding, batch-size invariance, limit, JSONL output, DataLoader input, target counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from data_fixtures import synthetic_world, write_grefcoco
from dataset.validation import build_val_dataset
from evaluation import EvalOptions, evaluate
from forced_answers import ForcedAnswers, answer_ids
from model import PixelLMForCausalLM, PixelLMImageProcessor
from model.conversation import left_padded
from model.tokenization import load_tokenizer
from model.tokens import resolve_token_ids


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    world = synthetic_world(tmp_path_factory.mktemp("eval_world"), train=4, val=3, seed=1)
    data, tiny = world["data"], world["tiny"]
    model = PixelLMForCausalLM.from_pretrained(tiny).eval()
    tokenizer = load_tokenizer(tiny)
    processor = PixelLMImageProcessor.from_pretrained(tiny)
    ids = resolve_token_ids(tokenizer, model.config.tokens_per_target)

    def val(name: str, dataset_dir: Path = data):
        return build_val_dataset(name, str(dataset_dir), tokenizer, processor, ids, model.config.num_image_tokens)

    return {"model": model, "tokenizer": tokenizer, "val": val}


def test_left_padded_puts_padding_on_the_left():
    new_ids, new_mask = left_padded([[5, 6, 7], [8, 9]], pad_id=0)
    assert new_ids.tolist() == [[5, 6, 7], [0, 8, 9]]
    assert new_mask.tolist() == [[1, 1, 1], [0, 1, 1]]


@pytest.mark.parametrize("name", ["ReasonSeg|val", "refcoco|unc|val", "MultiReasonSeg|val"])
def test_results_do_not_depend_on_the_batch_size(setup, name):
    val = setup["val"](name)
    one = evaluate(setup["model"], val, "cpu", EvalOptions(batch_size=1, max_new_tokens=12))
    three = evaluate(setup["model"], val, "cpu", EvalOptions(batch_size=3, max_new_tokens=12))
    assert one["items"] == len(val) and one["pairs"] >= len(val)
    # Padded batches run other kernel shapes: float rounding moves the untrained model's near-zero mask logits,
    # so a pixel or two may flip (measured: 1.2e-7 in gIoU); anything larger is a real batching bug.
    assert one == pytest.approx(three, abs=1e-6)
    assert 0.0 <= one["giou"] <= 1.0 and 0.0 <= one["ciou"] <= 1.0


def test_limit_jsonl_and_dataloader_input(setup, tmp_path):
    val = setup["val"]("MultiReasonSeg|val")
    path = tmp_path / "out" / "muse.jsonl"
    limited = evaluate(
        setup["model"], val, "cpu",
        EvalOptions(batch_size=2, limit=2, max_new_tokens=12, jsonl_path=str(path), tokenizer=setup["tokenizer"]),
    )
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1] and limited["items"] == 2
    assert sum(len(r["iou"]) for r in records) == limited["pairs"]
    assert all(len(r["answers"]) == len(r["questions"]) == len(r["pred_counts"]) == len(r["chosen_candidates"]) for r in records)
    assert all(isinstance(a, str) for r in records for a in r["answers"])

    loader = DataLoader(torch.utils.data.Subset(val, [0, 1]), batch_size=1, collate_fn=val.collate_fn)
    from_loader = evaluate(setup["model"], loader, "cpu", EvalOptions(max_new_tokens=12))
    assert from_loader == pytest.approx(limited, abs=1e-9)


def test_training_mode_is_restored(setup):
    model = setup["model"]
    model.train()
    evaluate(model, setup["val"]("ReasonSeg|val"), "cpu", EvalOptions(limit=1))
    assert model.training
    model.eval()


def test_muse_answers_without_targets(setup):
    # Every question answered in text only: right exactly for the questions without a target.
    val = setup["val"]("MultiReasonSeg|val")
    gt_counts = [len(targets) for i in range(len(val)) for targets in val[i].targets]
    assert 0 in gt_counts and any(gt_counts), "the synthetic val split should hold questions with and without targets"
    nothing = answer_ids(setup["tokenizer"], "There is none.")
    scripts = [[nothing] * len(val[i].targets) for i in range(len(val))]
    with ForcedAnswers(setup["model"], scripts):
        result = evaluate(setup["model"], val, "cpu", EvalOptions(max_new_tokens=12))
    assert result["questions"] == len(gt_counts)
    assert result["no_target_acc"] == 1.0
    assert result["count_acc"] == pytest.approx(gt_counts.count(0) / len(gt_counts))
    assert "invented_share" not in result  # no target was predicted
    assert result["pairs"] == sum(gt_counts) and result["giou"] == 0.0


def test_grefcoco_target_counts_next_to_n_acc(setup, tmp_path):
    # Teacher-forced: one mask per expression; a two-target expression and a no-target one.
    write_grefcoco(str(tmp_path))
    result = evaluate(setup["model"], setup["val"]("grefcoco|unc|val", tmp_path), "cpu", EvalOptions())
    assert result["questions"] == result["pairs"] == 2
    assert result["no_target_acc"] == result["n_acc"]
    assert "count_acc" not in result  # teacher forcing fixes one seg group per expression
    if result["n_acc"] == 0.0:  # a mask for the expression without a target is an invented target
        assert result["invented_share"] > 0
