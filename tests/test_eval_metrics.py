"""Hand-computed checks of the mask metrics and of Hungarian matching."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evaluation import (
    IoUAccumulator,
    MatchingConfig,
    all_reduce_,
    format_metrics,
    hungarian_match,
    pair_counts,
    question_mask_pairs,
    question_targets,
    teacher_forced_targets,
)


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """uint8 [h, w] with ones on rows y0:y1, columns x0:x1."""
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def test_both_empty_is_iou_one():
    counts = pair_counts(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.uint8))
    assert counts.intersection.tolist() == [0] and counts.union.tolist() == [0]
    assert counts.iou.tolist() == [1.0]


def test_empty_gt_nonempty_prediction_is_iou_zero():
    pred = box(4, 4, 0, 1, 0, 2).bool()
    counts = pair_counts(pred, torch.zeros(4, 4, dtype=torch.uint8))
    assert counts.union.tolist() == [2]
    assert counts.iou.tolist() == [0.0]


def test_ignore_pixels_count_in_neither_intersection_nor_union():
    gt = torch.tensor([[1, 1, 255, 0], [0, 0, 255, 255]], dtype=torch.uint8)
    pred = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)
    # Valid pixels: (0,0) P1 G1, (0,1) P0 G1, (0,3) P1 G0, (1,0), (1,1) both 0. Predictions on 255 drop out.
    counts = pair_counts(pred, gt)
    assert counts.intersection.tolist() == [1]
    assert counts.union.tolist() == [3]
    assert counts.iou.item() == pytest.approx(1 / 3)


def test_prediction_only_on_ignored_pixels_is_empty():
    gt = torch.tensor([[0, 255], [0, 0]], dtype=torch.uint8)
    pred = torch.tensor([[0, 1], [0, 0]], dtype=torch.bool)
    counts = pair_counts(pred, gt)
    assert counts.iou.tolist() == [1.0]
    assert counts.pred_nonempty.tolist() == [False]


def test_giou_and_ciou_differ_for_big_and_small_masks():
    # Big: GT 10x10 = 100 px, prediction rows 0..8 → I = 90, U = 100, IoU = 0.9.
    big_gt = box(20, 20, 0, 10, 0, 10)
    big_pred = box(20, 20, 0, 9, 0, 10).bool()
    # Small: GT 2x2 = 4 px at (12..13, 12..13); prediction (12,12) and (12,11) → I = 1, U = 5, IoU = 0.2.
    small_gt = box(20, 20, 12, 14, 12, 14)
    small_pred = box(20, 20, 12, 13, 11, 13).bool()
    acc = IoUAccumulator()
    acc.add(big_pred, big_gt)
    acc.add(small_pred.numpy(), small_gt.numpy())
    assert acc.num_pairs == 2
    assert acc.giou == pytest.approx((0.9 + 0.2) / 2)
    assert acc.ciou == pytest.approx((90 + 1) / (100 + 5))
    assert acc.summary() == pytest.approx({"giou": 0.55, "ciou": 91 / 105, "pairs": 2.0, "t_acc": 1.0})


def test_batch_add_equals_pairwise_add():
    preds = torch.stack([box(8, 8, 0, 4, 0, 4), box(8, 8, 2, 6, 2, 6)]).bool()
    gts = torch.stack([box(8, 8, 0, 4, 0, 2), box(8, 8, 0, 8, 0, 8)])
    batch, single = IoUAccumulator(), IoUAccumulator()
    batch.add(preds, gts)
    for p, g in zip(preds, gts):
        single.add(p, g)
    assert torch.equal(batch.to_tensor(), single.to_tensor())
    # 8/16 and 16/64.
    assert batch.giou == pytest.approx((0.5 + 0.25) / 2)


def test_all_empty_pairs_give_ciou_one():
    acc = IoUAccumulator()
    acc.add(torch.zeros(3, 5, 5, dtype=torch.bool), torch.zeros(3, 5, 5, dtype=torch.uint8))
    assert acc.giou == 1.0 and acc.ciou == 1.0


def test_empty_accumulator_refuses_to_report():
    with pytest.raises(ValueError, match="no \\(prediction, GT\\) pair"):
        IoUAccumulator().giou


def test_logits_and_bad_gt_values_are_refused():
    with pytest.raises(ValueError, match="threshold logits"):
        pair_counts(torch.tensor([[0.3, -2.0]]), torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="0, 1 or 255"):
        pair_counts(torch.tensor([[True, False]]), torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="postprocess_masks"):
        pair_counts(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(3, 2))


def test_no_target_and_target_accuracy():
    empty = torch.zeros(4, 4, dtype=torch.uint8)
    target = box(4, 4, 0, 2, 0, 2)
    acc = IoUAccumulator()
    acc.add(torch.zeros(4, 4, dtype=torch.bool), empty)  # no target, empty prediction: correct
    acc.add(box(4, 4, 3, 4, 3, 4).bool(), empty)  # no target, something predicted: wrong
    acc.add(torch.zeros(4, 4, dtype=torch.bool), empty)  # correct
    acc.add(box(4, 4, 2, 4, 2, 4).bool(), target)  # target, non-empty (even if misplaced): found
    acc.add(torch.zeros(4, 4, dtype=torch.bool), target)  # target, nothing predicted: missed
    assert acc.n_acc == pytest.approx(2 / 3)
    assert acc.t_acc == pytest.approx(1 / 2)
    assert IoUAccumulator().n_acc is None


def random_pairs(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    preds = torch.rand(n, 16, 16, generator=generator) > 0.6
    gts = (torch.rand(n, 16, 16, generator=generator) > 0.5).to(torch.uint8)
    gts[torch.rand(n, 16, 16, generator=generator) > 0.9] = 255
    return preds, gts


def test_merge_equals_one_accumulator_over_all_pairs():
    preds, gts = random_pairs(0, 10)
    whole, first, second = IoUAccumulator(), IoUAccumulator(), IoUAccumulator()
    whole.add(preds, gts)
    first.add(preds[:4], gts[:4])
    second.add(preds[4:], gts[4:])
    merged = IoUAccumulator.from_tensor(first.to_tensor()).merge(second)
    assert merged.num_pairs == 10
    assert torch.allclose(merged.to_tensor(), whole.to_tensor(), rtol=1e-12, atol=0)
    assert merged.giou == pytest.approx(whole.giou, rel=1e-12)
    assert merged.ciou == whole.ciou


def test_all_reduce_is_a_no_op_without_distributed():
    preds, gts = random_pairs(1, 3)
    acc = IoUAccumulator()
    acc.add(preds, gts)
    before = acc.to_tensor()
    assert all_reduce_(acc) is acc
    assert torch.equal(acc.to_tensor(), before)


def add_random_questions(acc: IoUAccumulator, preds: torch.Tensor, gts: torch.Tensor) -> None:
    """Each pair as a teacher-forced question and, again, pairs i and i + 1 as one free-generation question with i % 3 targets."""
    for targets in teacher_forced_targets(pair_counts(preds, gts)):
        acc.add_question(targets)
    for i in range(preds.shape[0] - 1):
        acc.add_question(question_targets(pair_counts(preds[i : i + 2], gts[i : i + 2]), i % 3))


def _all_reduce_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        preds, gts = random_pairs(0, 10)
        acc = IoUAccumulator()
        acc.add(preds[rank::world_size], gts[rank::world_size])
        add_random_questions(acc, preds[rank::world_size], gts[rank::world_size])
        all_reduce_(acc)
        if rank == 0:
            torch.save(acc.to_tensor(), result_file)
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_processes(tmp_path):
    result_file = str(tmp_path / "sums.pt")
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), result_file), nprocs=2, join=True)
    preds, gts = random_pairs(0, 10)
    whole = IoUAccumulator()
    whole.add(preds, gts)
    for rank in range(2):
        add_random_questions(whole, preds[rank::2], gts[rank::2])
    reduced = IoUAccumulator.from_tensor(torch.load(result_file, weights_only=True))
    assert reduced.num_pairs == 10
    assert torch.allclose(reduced.to_tensor(), whole.to_tensor(), rtol=1e-12, atol=0)
    assert reduced.summary()["questions"] == 10 + 2 * 4
    assert reduced.summary() == pytest.approx(whole.summary(), rel=1e-12)


def three_targets() -> torch.Tensor:
    """uint8 [3, 48, 64]: three disjoint boxes of different sizes, one with an ignored border."""
    gts = torch.stack([box(48, 64, 2, 20, 2, 24), box(48, 64, 26, 44, 30, 60), box(48, 64, 4, 16, 40, 56)])
    gts[2, 3, 39:57] = 255
    return gts


def logits_for(masks: torch.Tensor) -> torch.Tensor:
    """Confident logits (+8 inside, −8 outside) for 0/1/255 masks [N, H, W]."""
    return torch.where(masks == 1, 8.0, -8.0)


def test_matching_recovers_a_shuffled_order():
    gts = three_targets()
    order = [2, 0, 1]  # prediction i shows target order[i]
    preds = logits_for(gts[order])
    assert hungarian_match(preds, gts) == [(0, 2), (1, 0), (2, 1)]


def test_matching_prefers_the_better_overlap():
    gts = three_targets()[:2]
    # Prediction 0 is a shrunken copy of target 1, prediction 1 a shifted copy of target 0.
    preds = logits_for(torch.stack([box(48, 64, 28, 42, 32, 58), box(48, 64, 4, 22, 4, 26)]))
    assert hungarian_match(preds, gts) == [(0, 1), (1, 0)]


def test_matching_is_deterministic():
    generator = torch.Generator().manual_seed(3)
    preds = torch.randn(4, 32, 32, generator=generator)
    gts = (torch.rand(3, 32, 32, generator=generator) > 0.5).to(torch.uint8)
    config = MatchingConfig(num_points=500, seed=7)
    assert hungarian_match(preds, gts, config) == hungarian_match(preds, gts, config)
    first = question_mask_pairs(preds, gts, config)
    second = question_mask_pairs(preds.numpy(), gts.numpy(), config)
    assert len(first) == len(second) == 4
    for (p1, g1, u1), (p2, g2, u2) in zip(first, second):
        assert torch.equal(p1, p2) and torch.equal(g1, g2) and u1 == u2


def pair_ious(pairs) -> list[float]:
    return [pair_counts(p.pred, p.gt, p.unmatched).iou.item() for p in pairs]


def test_extra_prediction_adds_an_iou_zero_pair():
    gts = three_targets()[:2]
    extra = logits_for(box(48, 64, 40, 46, 2, 10).unsqueeze(0))
    preds = torch.cat([logits_for(gts[[1]]), extra, logits_for(gts[[0]])])
    pairs = question_mask_pairs(preds, gts)
    assert pair_ious(pairs) == [1.0, 1.0, 0.0]
    assert torch.equal(pairs[2][0], extra[0] > 0)
    assert not pairs[2][1].any()
    acc = IoUAccumulator()
    for pair in pairs:
        acc.add_counts(pair_counts(*pair))
    assert acc.giou == pytest.approx(2 / 3)
    # ΣI = both true targets, ΣU adds the 6x8 extra box.
    target_area = int((gts == 1).sum())
    assert acc.ciou == pytest.approx(target_area / (target_area + 48))


def test_extra_prediction_is_thresholded_not_raw_logits():
    gts = three_targets()[:1]
    # The extra prediction is confidently empty (all logits < 0): still an extra target, so IoU 0, not the
    # 1 that an empty prediction against an empty GT would score; it adds nothing to ΣU.
    preds = torch.cat([logits_for(gts), torch.full((1, 48, 64), -3.0)])
    pairs = question_mask_pairs(preds, gts)
    assert pairs[1].pred.dtype == torch.bool and not pairs[1].pred.any()
    assert [p.unmatched for p in pairs] == [False, True]
    assert pair_ious(pairs) == [1.0, 0.0]
    acc = IoUAccumulator()
    for pair in pairs:
        acc.add_counts(pair_counts(*pair))
    assert acc.giou == pytest.approx(0.5)
    assert acc.ciou == pytest.approx(1.0)


def test_missed_target_adds_an_iou_zero_pair():
    gts = three_targets()
    preds = logits_for(gts[[2, 0]])
    pairs = question_mask_pairs(preds, gts)
    assert pair_ious(pairs) == [1.0, 0.0, 1.0]
    assert not pairs[1][0].any()
    assert torch.equal(pairs[1][1], gts[1])


def test_no_predictions_or_no_targets():
    gts = three_targets()
    pairs = question_mask_pairs(torch.zeros(0, 48, 64), gts)
    assert pair_ious(pairs) == [0.0, 0.0, 0.0]
    preds = logits_for(gts[:2])
    pairs = question_mask_pairs(preds, torch.zeros(0, 48, 64, dtype=torch.uint8))
    assert pair_ious(pairs) == [0.0, 0.0]
    assert question_mask_pairs(torch.zeros(0, 48, 64), torch.zeros(0, 48, 64)) == []
    assert hungarian_match(torch.zeros(0, 48, 64), gts) == []


def test_matching_ignores_255_pixels():
    gt = torch.zeros(1, 32, 32, dtype=torch.uint8)
    gt[0, :, :16] = 255
    gt[0, 8:24, 20:28] = 1
    # Prediction 0 matches the target on valid pixels and fills the ignored half; prediction 1 misses it.
    wrong = torch.zeros(32, 32, dtype=torch.uint8)
    wrong[0:6, 16:32] = 1
    right = (gt[0] == 1).to(torch.uint8)
    right[:, :16] = 1
    preds = logits_for(torch.stack([right, wrong]))
    assert hungarian_match(preds, gt) == [(0, 0)]
    assert math.isclose(pair_ious(question_mask_pairs(preds, gt))[0], 1.0)


def test_matching_accepts_numpy():
    gts = three_targets()
    preds = logits_for(gts[[1, 2, 0]])
    expected = [(0, 1), (1, 2), (2, 0)]
    assert hungarian_match(preds.numpy(), gts.numpy()) == hungarian_match(preds, gts) == expected


# -- target counts: no-target questions, enumeration, invented targets ------------------------------------------
def answer(gts: torch.Tensor, pred_logits: torch.Tensor):
    """The target counts of one free-generation question: predictions [P, H, W] (logits) for GT masks [G, H, W]."""
    pairs = question_mask_pairs(pred_logits, gts)
    height, width = gts.shape[-2:]
    counts = pair_counts(
        torch.stack([p.pred for p in pairs]) if pairs else torch.zeros(0, height, width, dtype=torch.bool),
        torch.stack([p.gt for p in pairs]) if pairs else torch.zeros(0, height, width, dtype=torch.uint8),
        [p.unmatched for p in pairs],
    )
    return question_targets(counts, gts.shape[0])


NO_GT = torch.zeros(0, 48, 64, dtype=torch.uint8)
NO_PRED = torch.zeros(0, 48, 64)
ELSEWHERE = box(48, 64, 40, 46, 2, 10)  # touches none of three_targets()


def test_no_target_question_answered_with_nothing():
    targets = answer(NO_GT, NO_PRED)
    assert (targets.gt, targets.predicted, targets.invented, targets.counted) == (0, 0, 0, True)


def test_no_target_question_answered_with_a_mask_invents_it():
    targets = answer(NO_GT, logits_for(ELSEWHERE[None]))
    assert (targets.gt, targets.predicted, targets.invented) == (0, 1, 1)


def test_a_seg_group_whose_mask_is_empty_names_no_target():
    # All logits < 0: the answer wrote a seg group, but its mask is empty after thresholding.
    targets = answer(NO_GT, torch.full((1, 48, 64), -3.0))
    assert (targets.predicted, targets.invented) == (0, 0)
    targets = answer(three_targets()[:1], torch.cat([logits_for(three_targets()[:1]), torch.full((1, 48, 64), -3.0)]))
    assert (targets.gt, targets.predicted, targets.invented) == (1, 1, 0)


def test_under_enumeration():
    gts = three_targets()
    targets = answer(gts, logits_for(gts[[2, 0]]))
    assert (targets.gt, targets.predicted, targets.invented) == (3, 2, 0)


def test_over_enumeration_invents_the_extra_target():
    gts = three_targets()[:2]
    targets = answer(gts, logits_for(torch.stack([gts[1], ELSEWHERE, gts[0]])))
    assert (targets.gt, targets.predicted, targets.invented) == (2, 3, 1)


def test_a_target_named_in_place_of_a_missed_one_is_invented():
    # Two targets, two masks: one right, one on nothing. The matching pairs the stray mask with the missed
    # target (IoU 0): the count is right, and the stray mask counts as invented.
    gts = three_targets()[:2]
    targets = answer(gts, logits_for(torch.stack([gts[0], ELSEWHERE])))
    assert (targets.gt, targets.predicted, targets.invented) == (2, 2, 1)
    # A mask that touches its target by one pixel is a poor mask, not an invented target.
    touching = ELSEWHERE.clone()
    touching[26, 30] = 1  # the corner pixel of target 1
    assert answer(gts, logits_for(torch.stack([gts[0], touching]))).invented == 0


def test_target_metrics_over_questions():
    gts = three_targets()
    acc = IoUAccumulator()
    for targets in (
        answer(NO_GT, NO_PRED),  # no target, no mask: right
        answer(NO_GT, logits_for(ELSEWHERE[None])),  # no target, one invented
        answer(NO_GT, torch.full((1, 48, 64), -3.0)),  # no target, an empty mask: right
        answer(gts, logits_for(gts[[2, 0]])),  # 3 targets, 2 found
        answer(gts[:2], logits_for(torch.stack([gts[1], ELSEWHERE, gts[0]]))),  # 2 targets, 3 masks, 1 invented
        answer(gts[:2], logits_for(gts[:2])),  # right
    ):
        acc.add_question(targets)
    assert acc.no_target_acc == pytest.approx(2 / 3)
    assert acc.count_acc == pytest.approx(3 / 6)
    # 1 + 0 + 0 + 2 + 3 + 2 predicted targets, 2 of them invented.
    assert acc.invented_share == pytest.approx(2 / 8)
    assert IoUAccumulator().no_target_acc is None and IoUAccumulator().count_acc is None and IoUAccumulator().invented_share is None
    # Only questions added, no pairs yet: the summary needs pairs for gIoU.
    acc.add(torch.zeros(1, 48, 64, dtype=torch.bool), NO_GT.new_zeros(1, 48, 64))
    summary = acc.summary()
    assert summary["questions"] == 6
    assert summary["no_target_acc"] == pytest.approx(2 / 3) and summary["count_acc"] == 0.5 and summary["invented_share"] == 0.25


def test_teacher_forced_questions_have_no_count_accuracy():
    # gRefCOCO-style: one mask per expression; a no-target expression scored against an empty mask.
    target = box(4, 4, 0, 2, 0, 2)
    empty = torch.zeros(4, 4, dtype=torch.uint8)
    preds = torch.stack([torch.zeros(4, 4), box(4, 4, 3, 4, 3, 4), box(4, 4, 1, 3, 1, 3), box(4, 4, 3, 4, 0, 1)]).bool()
    gts = torch.stack([empty, empty, target, target])
    counts = pair_counts(preds, gts)
    targets = teacher_forced_targets(counts)
    assert [(t.gt, t.predicted, t.invented, t.counted) for t in targets] == [
        (0, 0, 0, False), (0, 1, 1, False), (1, 1, 0, False), (1, 1, 1, False)
    ]
    acc = IoUAccumulator()
    acc.add_counts(counts)
    for t in targets:
        acc.add_question(t)
    assert acc.no_target_acc == acc.n_acc == 0.5
    assert acc.count_acc is None
    assert acc.invented_share == pytest.approx(2 / 3)
    summary = acc.summary()
    assert "count_acc" not in summary and summary["questions"] == 4


def test_format_metrics_shows_what_a_set_defines():
    assert format_metrics({"giou": 0.5, "ciou": 0.25, "pairs": 3.0}) == "gIoU=0.5000 cIoU=0.2500"
    line = format_metrics({"giou": 0.5, "ciou": 0.25, "n_acc": 1.0, "no_target_acc": 1.0, "count_acc": 0.75, "invented_share": 0.125})
    assert line == "gIoU=0.5000 cIoU=0.2500 n_acc=1.0000 no_target_acc=1.0000 count_acc=0.7500 invented_share=0.1250"
