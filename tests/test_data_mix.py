"""The mixture: sampling proportions, determinism in (seed, index), resume, skipped-item counters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch.utils.data import DataLoader

import data_fixtures as fx
from dataset.mix import DataArgs, HybridDataset
from dataset.sampler import GlobalIndexSampler
from dataset.skips import report_skips
from model.processing_pixellm import PixelLMImageProcessor

PROC = PixelLMImageProcessor(image_size=32)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    fx.write_ade20k(str(root), n=2)
    fx.write_refer(str(root))
    fx.write_llava(str(root))
    fx.write_muse(str(root))
    return root


def mixed(root, seed=0, samples_per_epoch=10000) -> HybridDataset:
    args = DataArgs(dataset_dir=str(root), dataset="sem_seg||refer_seg||vqa||multi_reason_seg", sample_rates="2,9,2,4",
                    sem_seg_data="ade20k", refer_seg_data="refcoco", seed=seed)
    return HybridDataset(args, PROC, tokens_per_target=2, samples_per_epoch=samples_per_epoch)


def test_mix_proportions_within_three_sigma(tree):
    ds = mixed(tree)
    n = 20000
    kinds = [ds.kind_for_index(i) for i in range(n)]
    p = np.array([2, 9, 2, 4]) / 17
    for kind, pk in zip(ds.kinds, p):
        count = kinds.count(kind)
        sigma = np.sqrt(n * pk * (1 - pk))
        assert abs(count - n * pk) < 3 * sigma, (kind, count, n * pk)
    source_of = {"ade20k": "sem_seg", "refcoco": "refer_seg", "llava_instruct_150k": "vqa", "muse_train": "multi_reason_seg"}
    for i in range(30):  # the cheap kind lookup agrees with the item actually built
        assert source_of[ds[i].source] == kinds[i]


def describe(sample):
    return (sample.source, [[(t.question, t.answer) for t in c] for c in sample.conversations], sample.masks.sum())


def test_item_is_a_pure_function_of_seed_and_index(tree):
    a, b = mixed(tree, seed=5), mixed(tree, seed=5)
    forward = [describe(a[i]) for i in range(12)]
    assert [describe(b[i]) for i in reversed(range(12))] == forward[::-1]  # order of access does not matter
    assert [describe(mixed(tree, seed=6)[i]) for i in range(12)] != forward


def test_resume_continues_the_same_order(tree):
    ds = mixed(tree, seed=2, samples_per_epoch=10)
    full = list(GlobalIndexSampler(10, start=0))
    resumed = list(GlobalIndexSampler(6, start=4))
    assert resumed == full[4:]
    assert [describe(ds[i]) for i in resumed] == [describe(ds[i]) for i in full[4:]]
    ranks = [list(GlobalIndexSampler(3, start=6, rank=r, world_size=2)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(6, 12))


def test_skip_counts_reach_the_main_process_from_workers(tmp_path):
    fx.write_muse(str(tmp_path))
    path = tmp_path / "muse" / "muse_train.json"
    items = json.loads(path.read_text())
    # an extra item whose first question has one {seg} for two answers
    bad = dict(items[0], text_answers=["Only one {seg} here.", "The long blue box {seg}."])
    fx.write_json(str(path), items + [bad])
    ds = HybridDataset(DataArgs(dataset_dir=str(tmp_path), dataset="multi_reason_seg", sample_rates="1"), PROC, 2, samples_per_epoch=16)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=lambda xs: len(xs))
    assert sum(loader) == 16
    counts = report_skips(ds.skip_counter, log=lambda msg: None)
    assert counts["muse_train"]["target_count_mismatch"] >= 1
    assert ds.skip_counter.counts() == {}
