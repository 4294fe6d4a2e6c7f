"""Mask metrics: per-pair intersection/union, gIoU, cIoU, the gRefCOCO no-target accuracies, and target counts.

Definitions (for one pair of a predicted mask P and a ground-truth mask G of the same [H, W] size; pixels
where G = 255 are ignored everywhere, in P as well as in G):

- I = |P ∩ G|, U = |P ∪ G|, IoU = I / U, and IoU = 1 where U = 0 (both empty on the valid pixels),
  except for an *unmatched* pair (multi-target matching: a missed target or an extra prediction paired
  with an empty partner), whose IoU is 0 whatever its masks.
- gIoU = mean of IoU over all pairs.
- cIoU = ΣI / ΣU over all pairs; 1.0 where ΣU = 0 (every pair had both masks empty, so every IoU is 1).
- A pair's GT "has no target" when no valid pixel of G is 1; the prediction "is empty" when no valid
  pixel of P is set.
- N-acc = (no-target pairs whose prediction is empty) / (no-target pairs): how often the model correctly
  answers "nothing". T-acc = (pairs with a target whose prediction is non-empty) / (pairs with a target):
  how often it finds something when something is there. Each is None when there is no pair of its kind.

Per question (one conversation: a MUSE question, a referring expression), from the pairs that score it:

- its *predicted targets* are the predicted masks that are not empty (on the valid pixels of the GT they
  are paired with); a seg group whose mask is empty after thresholding names no target. Its *GT targets*
  are its ground-truth masks (free generation) or, teacher-forced, 1 when its one GT mask has a target.
- a predicted target is *invented* when it shares no valid pixel with the GT it is paired with: an
  unmatched prediction (paired with an empty GT), and also one the Hungarian matching paired with a real
  target it does not touch (IoU 0). The matching always pairs min(P, G) masks, so a named target that is
  not in the image, given in place of a missed one, is matched to the missed one; only the IoU-0 rule
  counts it as invented.
- no_target_acc = (questions without a GT target answered with no predicted target) / (questions without
  a GT target); None without such questions. Teacher-forced, each question is one pair, so it equals N-acc.
- count_acc = (questions whose number of predicted targets equals their number of GT targets) /
  (questions); only for free generation, where the model chooses how many seg groups to write (teacher
  forcing fixes one per question), else None.
- invented_share = (invented predicted targets) / (predicted targets) over all questions; None when no
  target was predicted.

Inputs may be torch tensors on any device or numpy arrays.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from model.losses import IGNORE_LABEL

TARGET_METRICS = ("no_target_acc", "count_acc", "invented_share")

MaskLike = torch.Tensor | np.ndarray


def as_tensor(mask: MaskLike, name: str) -> torch.Tensor:
    """Return `mask` as a torch tensor (contiguous numpy arrays are wrapped without copying)."""
    if isinstance(mask, torch.Tensor):
        return mask
    if isinstance(mask, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(mask))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(mask).__name__}")


def _binary_prediction(pred: torch.Tensor) -> torch.Tensor:
    """Bool view of a prediction given as bool or as 0/1 numbers; anything else (e.g. logits) is refused."""
    if pred.dtype == torch.bool:
        return pred
    if not bool(((pred == 0) | (pred == 1)).all()):
        raise ValueError(
            "prediction masks must be bool or hold only 0/1; threshold logits first (logits > 0)"
        )
    return pred != 0


def _check_gt(gt: torch.Tensor) -> None:
    if gt.dtype == torch.bool:
        return
    if not bool(((gt == 0) | (gt == 1) | (gt == IGNORE_LABEL)).all()):
        raise ValueError(f"ground-truth masks must hold only 0, 1 or {IGNORE_LABEL} (ignore)")


@dataclass(frozen=True)
class PairCounts:
    """Per-pair counts, each a long tensor [N] on the inputs' device.

    intersection: |P ∩ G| on valid pixels; union: |P ∪ G| on valid pixels;
    pred_nonempty / gt_has_target: bool [N], whether P resp. G has a valid positive pixel;
    unmatched: bool [N], pairs that score IoU 0 because one side was invented for an unmatched mask.
    """

    intersection: torch.Tensor
    union: torch.Tensor
    pred_nonempty: torch.Tensor
    gt_has_target: torch.Tensor
    unmatched: torch.Tensor

    @property
    def iou(self) -> torch.Tensor:
        """IoU per pair, float64 [N]; 1 where the union is empty, 0 for unmatched pairs."""
        inter = self.intersection.double()
        union = self.union.double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        return torch.where(self.unmatched, torch.zeros_like(iou), iou)

    def split(self, sizes: list[int]) -> list["PairCounts"]:
        """Consecutive groups of ``sizes`` pairs each (e.g. the pairs of each question)."""
        fields = [torch.split(t, sizes) for t in (self.intersection, self.union, self.pred_nonempty, self.gt_has_target, self.unmatched)]
        return [PairCounts(*group) for group in zip(*fields)]


@dataclass(frozen=True)
class QuestionTargets:
    """Target counts of one question (definitions in the module docstring).

    gt: GT targets; predicted: non-empty predicted masks; invented: those sharing no valid pixel with
    their paired GT; counted: whether the model chose the number of masks (free generation).
    """

    gt: int
    predicted: int
    invented: int
    counted: bool


def question_targets(counts: PairCounts, gt_targets: int, counted: bool = True) -> QuestionTargets:
    """The target counts of one question from the pairs that score it (``question_mask_pairs`` for free generation)."""
    predicted = counts.pred_nonempty
    return QuestionTargets(gt_targets, int(predicted.sum()), int((predicted & (counts.intersection == 0)).sum()), counted)


def teacher_forced_targets(counts: PairCounts) -> list[QuestionTargets]:
    """One question per pair (teacher-forced sets: one seg group per question, scored against its one GT mask)."""
    return [question_targets(pair, int(pair.gt_has_target.any()), counted=False) for pair in counts.split([1] * counts.intersection.numel())]


def pair_counts(preds: MaskLike, gts: MaskLike, unmatched: MaskLike | bool | None = None) -> PairCounts:
    """Intersection and union of predicted masks against ground truths, ignoring GT = 255 pixels.

    preds: bool (or 0/1) [N, H, W] or [H, W]; gts: 0/1/255 [N, H, W] or [H, W], same shape;
    unmatched: bool [N] (or a bool for one pair), pairs forced to IoU 0 (default: none).
    """
    pred = _binary_prediction(as_tensor(preds, "preds"))
    gt = as_tensor(gts, "gts").to(pred.device)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from ground-truth shape {tuple(gt.shape)}: "
            "resize the predicted masks to the GT size (PixelLMImageProcessor.postprocess_masks) first"
        )
    _check_gt(gt)
    if pred.dim() == 2:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    if pred.dim() != 3:
        raise ValueError(f"masks must be [H, W] or [N, H, W], got shape {tuple(pred.shape)}")
    valid = gt != IGNORE_LABEL if gt.dtype != torch.bool else torch.ones_like(gt)
    target = (gt == 1) & valid
    pred = pred & valid
    forced = torch.zeros(pred.shape[0], dtype=torch.bool, device=pred.device)
    if unmatched is not None:
        forced = torch.as_tensor(unmatched, dtype=torch.bool, device=pred.device).reshape(-1)
        if forced.numel() != pred.shape[0]:
            raise ValueError(f"unmatched has {forced.numel()} flags for {pred.shape[0]} pairs")
    return PairCounts(
        intersection=(pred & target).flatten(1).sum(1),
        union=(pred | target).flatten(1).sum(1),
        pred_nonempty=pred.flatten(1).any(1),
        gt_has_target=target.flatten(1).any(1),
        unmatched=forced,
    )


class IoUAccumulator:
    """Running sums for gIoU, cIoU, N-acc and T-acc over (prediction, GT) pairs, and for no_target_acc,
    count_acc and invented_share over questions.

    The state is a float64 vector (see `FIELDS`), so accumulators from several processes combine by
    summation: `merge`, `to_tensor` / `from_tensor`, or `all_reduce_` under torch.distributed.
    """

    # The pair sums (``add_counts``) come first, then the question sums (``add_question``).
    FIELDS = (
        "iou_sum",
        "intersection_sum",
        "union_sum",
        "pairs",
        "no_target_pairs",
        "no_target_empty_pred",
        "target_pairs",
        "target_nonempty_pred",
        "questions",
        "no_target_questions",
        "no_target_no_mask",
        "counted_questions",
        "count_correct",
        "predicted_targets",
        "invented_targets",
    )

    def __init__(self) -> None:
        self._sums = torch.zeros(len(self.FIELDS), dtype=torch.float64)

    def add(self, preds: MaskLike, gts: MaskLike) -> None:
        """Add one pair ([H, W]) or a batch of pairs ([N, H, W]); see `pair_counts` for the inputs."""
        self.add_counts(pair_counts(preds, gts))

    def add_counts(self, counts: PairCounts) -> None:
        """Add pairs whose counts were already computed."""
        no_target = ~counts.gt_has_target
        values = torch.stack(
            [
                counts.iou.sum(),
                counts.intersection.double().sum(),
                counts.union.double().sum(),
                torch.tensor(counts.intersection.numel(), dtype=torch.float64, device=no_target.device),
                no_target.double().sum(),
                (no_target & ~counts.pred_nonempty).double().sum(),
                counts.gt_has_target.double().sum(),
                (counts.gt_has_target & counts.pred_nonempty).double().sum(),
            ]
        )
        self._sums[: len(values)] += values.cpu()

    def add_question(self, targets: QuestionTargets) -> None:
        """Add one question's target counts (its pairs go in separately, through ``add_counts``)."""
        no_target = targets.gt == 0
        for field, value in (
            ("questions", 1),
            ("no_target_questions", no_target),
            ("no_target_no_mask", no_target and targets.predicted == 0),
            ("counted_questions", targets.counted),
            ("count_correct", targets.counted and targets.predicted == targets.gt),
            ("predicted_targets", targets.predicted),
            ("invented_targets", targets.invented),
        ):
            self._sums[self.FIELDS.index(field)] += float(value)

    def _get(self, field: str) -> float:
        return float(self._sums[self.FIELDS.index(field)])

    @property
    def num_pairs(self) -> int:
        return int(self._get("pairs"))

    def _require_pairs(self, metric: str) -> None:
        if self.num_pairs == 0:
            raise ValueError(f"{metric} is undefined: no (prediction, GT) pair was added to the accumulator")

    @property
    def giou(self) -> float:
        """Mean IoU over all pairs."""
        self._require_pairs("gIoU")
        return self._get("iou_sum") / self._get("pairs")

    @property
    def ciou(self) -> float:
        """ΣI / ΣU over all pairs; 1.0 when ΣU = 0."""
        self._require_pairs("cIoU")
        union = self._get("union_sum")
        return self._get("intersection_sum") / union if union > 0 else 1.0

    @property
    def n_acc(self) -> float | None:
        """Fraction of no-target pairs predicted empty; None without no-target pairs."""
        total = self._get("no_target_pairs")
        return self._get("no_target_empty_pred") / total if total > 0 else None

    @property
    def t_acc(self) -> float | None:
        """Fraction of pairs with a target predicted non-empty; None without such pairs."""
        total = self._get("target_pairs")
        return self._get("target_nonempty_pred") / total if total > 0 else None

    def _share(self, part: str, whole: str) -> float | None:
        total = self._get(whole)
        return self._get(part) / total if total > 0 else None

    @property
    def no_target_acc(self) -> float | None:
        """Fraction of questions without a GT target answered with no predicted target; None without such questions."""
        return self._share("no_target_no_mask", "no_target_questions")

    @property
    def count_acc(self) -> float | None:
        """Fraction of free-generation questions with as many predicted targets as GT targets; None without them."""
        return self._share("count_correct", "counted_questions")

    @property
    def invented_share(self) -> float | None:
        """Fraction of predicted targets that are invented; None when no target was predicted."""
        return self._share("invented_targets", "predicted_targets")

    def summary(self) -> dict[str, float]:
        """giou, ciou, pairs, and where defined n_acc, t_acc, questions, no_target_acc, count_acc, invented_share."""
        result = {"giou": self.giou, "ciou": self.ciou, "pairs": float(self.num_pairs)}
        if self._get("questions") > 0:
            result["questions"] = self._get("questions")
        for name in ("n_acc", "t_acc", *TARGET_METRICS):
            value = getattr(self, name)
            if value is not None:
                result[name] = value
        return result

    def to_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The sums as a float64 tensor [len(FIELDS)] (a copy) on `device`."""
        return self._sums.to(device, copy=True)

    @classmethod
    def from_tensor(cls, sums: torch.Tensor) -> "IoUAccumulator":
        """An accumulator holding `sums` (float [len(FIELDS)], as made by `to_tensor`)."""
        if sums.shape != (len(cls.FIELDS),):
            raise ValueError(
                f"expected sums of shape ({len(cls.FIELDS)},) in the order {cls.FIELDS}, "
                f"got {tuple(sums.shape)}"
            )
        acc = cls()
        acc._sums = sums.detach().to("cpu", torch.float64).clone()
        return acc

    def merge(self, other: "IoUAccumulator") -> "IoUAccumulator":
        """Add `other`'s pairs to this accumulator; returns self."""
        self._sums += other._sums
        return self


def format_metrics(result: dict) -> str:
    """``gIoU=… cIoU=…`` followed by whichever of n_acc, t_acc, no_target_acc, count_acc, invented_share ``result`` holds."""
    parts = [f"gIoU={result['giou']:.4f}", f"cIoU={result['ciou']:.4f}"]
    parts += [f"{name}={result[name]:.4f}" for name in ("n_acc", "t_acc", *TARGET_METRICS) if result.get(name) is not None]
    return " ".join(parts)


def all_reduce_(acc: IoUAccumulator, device: torch.device | str | None = None) -> IoUAccumulator:
    """Sum `acc` over all processes in place when torch.distributed is initialized; else leave it as is.

    device: where the collective runs; None picks the current CUDA device for the NCCL backend and the
    CPU otherwise. Returns `acc`.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return acc
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    sums = acc.to_tensor(device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    acc._sums = sums.to("cpu")
    return acc
