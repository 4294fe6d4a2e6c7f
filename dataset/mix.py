"""The training mixture: ``DataArgs`` (the original's flags) and ``HybridDataset``.

``HybridDataset[i]`` is a pure function of (seed, i): the rng for index i is seeded with (seed, i),
draws the data type by ``sample_rates``, then the source and item within it. Resuming at global
sample index s therefore reproduces the run exactly (see ``dataset.sampler.GlobalIndexSampler``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from cli import flag
from model.processing_pixellm import PixelLMImageProcessor

from .multi_reason_seg import multi_reason_seg_dataset
from .reason_seg import reason_seg_dataset
from .refer_seg import refer_seg_dataset
from .sample import Sample
from .sem_seg import sem_seg_dataset
from .skips import SkipCounter
from .source import DataContext, TypeDataset, parse_split_spec
from .vqa import vqa_dataset

DATA_TYPES = ("sem_seg", "refer_seg", "vqa", "reason_seg", "multi_reason_seg")


@dataclass
class DataArgs:
    """Data flags, named as in the original ``train_ds.py`` (lists joined with ``||``)."""

    dataset_dir: str = flag("./dataset", "root folder of all datasets")
    dataset: str = flag("sem_seg||refer_seg||vqa||reason_seg", "'||'-joined data types of the training mixture")
    sample_rates: str = flag("9,3,3,1", "comma-separated sampling weights, one per --dataset entry")
    sem_seg_data: str = flag("ade20k||cocostuff||pascal_part||paco_lvis||mapillary", "'||'-joined semantic segmentation sets")
    refer_seg_data: str = flag("refclef||refcoco||refcoco+||refcocog", "'||'-joined referring segmentation sets")
    vqa_data: str = flag("llava_instruct_150k", "'||'-joined VQA sets")
    reason_seg_data: str = flag("ReasonSeg|train", "ReasonSeg split(s), e.g. 'ReasonSeg|train'")
    multi_reason_seg_data: str = flag("MultiReasonSeg|train", "MUSE split(s), e.g. 'MultiReasonSeg|train'")
    num_classes_per_sample: int = flag(3, "maximum questions per image")
    num_classes_per_question: int = flag(1, "maximum targets per question (sem_seg, refer_seg)")
    use_expand_question_list: bool = flag(False, "use the expanded question templates")
    explanatory: float = flag(0.1, "probability of an explanatory ReasonSeg answer")
    seed: int = flag(0, "seed of the sample order (and of the run: LoRA init, dropout)")

    def kinds(self) -> list[str]:
        kinds = [k for k in self.dataset.split("||") if k]
        unknown = [k for k in kinds if k not in DATA_TYPES]
        if unknown or not kinds:
            raise ValueError(f"--dataset: unknown data types {unknown}; use '||'-joined names from {DATA_TYPES}")
        return kinds

    def rates(self) -> np.ndarray:
        """Sampling probabilities of ``kinds()``."""
        try:
            rates = np.array([float(r) for r in self.sample_rates.split(",")], dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"--sample_rates '{self.sample_rates}' must be comma-separated numbers") from err
        if len(rates) != len(self.kinds()) or (rates < 0).any() or rates.sum() <= 0:
            raise ValueError(
                f"--sample_rates '{self.sample_rates}' needs one non-negative rate per --dataset entry {self.kinds()}"
            )
        return rates / rates.sum()

    def source_names(self) -> list[str]:
        """The names under which skipped items are counted."""
        split = {
            "sem_seg": lambda: self.sem_seg_data.split("||"),
            "refer_seg": lambda: self.refer_seg_data.split("||"),
            "vqa": lambda: self.vqa_data.split("||"),
            "reason_seg": lambda: ["ReasonSeg"],
            "multi_reason_seg": lambda: [f"muse_{s}" for s in parse_split_spec(self.multi_reason_seg_data, "MultiReasonSeg")],
        }
        return [n for kind in self.kinds() for n in split[kind]() if n]


class HybridDataset(Dataset):
    """The mixed training set; ``len`` is ``samples_per_epoch``, any index >= 0 is valid."""

    def __init__(self, args: DataArgs, processor: PixelLMImageProcessor, tokens_per_target: int, samples_per_epoch: int = 10000) -> None:
        self.args = args
        self.samples_per_epoch = samples_per_epoch
        self.kinds = args.kinds()
        self.probabilities = args.rates()
        self.skip_counter = SkipCounter(args.source_names())
        ctx = DataContext(processor=processor, tokens_per_target=tokens_per_target, args=args)
        self.ctx = ctx
        self.datasets: list[TypeDataset] = [self._build(kind, ctx) for kind in self.kinds]

    def _build(self, kind: str, ctx: DataContext) -> TypeDataset:
        a, c = self.args, self.skip_counter
        if kind == "sem_seg":
            return sem_seg_dataset(a.dataset_dir, a.sem_seg_data.split("||"), ctx, c)
        if kind == "refer_seg":
            return refer_seg_dataset(a.dataset_dir, a.refer_seg_data.split("||"), ctx, c)
        if kind == "vqa":
            return vqa_dataset(a.dataset_dir, a.vqa_data.split("||"), ctx, c)
        if kind == "reason_seg":
            return reason_seg_dataset(a.dataset_dir, a.reason_seg_data, ctx, c)
        return multi_reason_seg_dataset(a.dataset_dir, a.multi_reason_seg_data, ctx, c)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _rng(self, index: int) -> np.random.Generator:
        if index < 0:
            raise IndexError(f"HybridDataset index must be >= 0, got {index}")
        return np.random.default_rng([self.args.seed, index])

    def kind_index(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.kinds), p=self.probabilities))

    def kind_for_index(self, index: int) -> str:
        """The data type sample ``index`` comes from (cheap: no image is read)."""
        return self.kinds[self.kind_index(self._rng(index))]

    def __getitem__(self, index: int) -> Sample:
        rng = self._rng(int(index))
        return self.datasets[self.kind_index(rng)].sample(rng)
