"""Robustness: the restricted unpickler, clear errors for missing data, skipped inconsistent items, braces."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

import data_fixtures as fx
from dataset.errors import DatasetNotFoundError
from dataset.mix import DataArgs, HybridDataset
from dataset.safe_pickle import load_plain_pickle
from dataset.templates import fill
from model.processing_pixellm import PixelLMImageProcessor

PROC = PixelLMImageProcessor(image_size=32)


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_plain_pickle_loads_containers(tmp_path):
    data = [{"ref_id": 1, "sentences": [{"sent": "x"}], "box": (1.5, 2), "tags": {"a", "b"}, "none": None}]
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert load_plain_pickle(str(path)) == data


@pytest.mark.parametrize("payload", [Boom(), np.zeros(3)])
def test_plain_pickle_refuses_objects(tmp_path, payload):
    path = tmp_path / "evil.p"
    path.write_bytes(pickle.dumps([payload]))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_plain_pickle(str(path))


def make(root, kind, samples_per_epoch=10000, **kw):
    return HybridDataset(DataArgs(dataset_dir=str(root), dataset=kind, sample_rates="1", **kw), PROC, 2, samples_per_epoch)


@pytest.mark.parametrize("kind,flags,needle", [
    ("sem_seg", {"sem_seg_data": "ade20k"}, "ade20k"),
    ("refer_seg", {"refer_seg_data": "refcoco"}, "refcoco"),
    ("vqa", {}, "llava_instruct_150k"),
    ("reason_seg", {}, "ReasonSeg"),
    ("multi_reason_seg", {}, "muse_train.json"),
])
def test_missing_folder_is_a_clear_error(tmp_path, kind, flags, needle):
    with pytest.raises(DatasetNotFoundError) as err:
        make(tmp_path, kind, **flags)
    msg = str(err.value)
    assert needle in msg and str(tmp_path) in msg and "Expected there" in msg


def test_missing_refer_pickle_names_the_file(tmp_path):
    fx.write_refer(str(tmp_path))
    os.remove(tmp_path / "refer_seg" / "refcoco" / "refs(unc).p")
    with pytest.raises(DatasetNotFoundError, match=r"refcoco.*refs\(unc\)\.p"):
        make(tmp_path, "refer_seg", refer_seg_data="refcoco")


def muse_with(tmp_path, edit) -> HybridDataset:
    fx.write_muse(str(tmp_path))
    path = tmp_path / "muse" / "muse_train.json"
    good = json.loads(path.read_text())[0]
    bad = json.loads(json.dumps(good))
    edit(bad)
    fx.write_json(str(path), [good, bad])
    return make(tmp_path, "multi_reason_seg", samples_per_epoch=30)


@pytest.mark.parametrize("edit,reason", [
    (lambda it: it["text_answers"].__setitem__(1, "No seg placeholder."), "target_count_mismatch"),
    (lambda it: it["answers"][1][0].__setitem__("segmentation", [[0, 0, 500, 0, 500, 40, 0, 40]]), "polygon_out_of_bounds"),
    (lambda it: it["answers"][1][0].__setitem__("segmentation", [[5, 5, 5, 5, 5, 5]]), "empty_mask"),
])
def test_inconsistent_muse_questions_are_skipped_and_counted(tmp_path, edit, reason):
    ds = muse_with(tmp_path, edit)
    samples = [ds[i] for i in range(30)]
    counts = ds.skip_counter.counts()["muse_train"]
    assert counts[reason] > 0
    for s in samples:  # every sample that came out is consistent
        assert s.masks.shape[0] == sum(len(t) for t in s.targets)
        assert all((m == 1).any() for m in s.masks)


def test_unreadable_image_is_skipped_and_counted(tmp_path):
    fx.write_ade20k(str(tmp_path), n=2)
    (tmp_path / "ade20k" / "images" / "training" / "ADE_train_00000001.jpg").write_bytes(b"not a jpeg")
    ds = make(tmp_path, "sem_seg", sem_seg_data="ade20k")
    samples = [ds[i] for i in range(10)]
    assert all(s.image_path.endswith("ADE_train_00000002.jpg") for s in samples)
    assert ds.skip_counter.counts()["ade20k"]["unreadable_image"] > 0


def test_out_of_bounds_refer_polygon_is_skipped(tmp_path):
    fx.write_refer(str(tmp_path))
    path = tmp_path / "refer_seg" / "refcoco" / "instances.json"
    inst = json.loads(path.read_text())
    inst["annotations"][0]["segmentation"] = [[0, 0, 900, 0, 900, 900]]  # the red box's polygon
    fx.write_json(str(path), inst)
    ds = make(tmp_path, "refer_seg", refer_seg_data="refcoco", num_classes_per_sample=1)
    targets = [n for i in range(20) for g in ds[i].targets for n in g]
    assert len(targets) == 20 and fx.REFER_SENTENCES["red"] not in targets
    assert ds.skip_counter.counts()["refcoco"]["polygon_out_of_bounds"] > 0


def test_a_wholly_broken_source_is_a_clear_error(tmp_path):
    fx.write_ade20k(str(tmp_path), n=1)
    (tmp_path / "ade20k" / "images" / "training" / "ADE_train_00000001.jpg").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"sem_seg: 100 items in a row were unusable.*unreadable_image.*ade20k"):
        make(tmp_path, "sem_seg", sem_seg_data="ade20k")[0]


def test_braces_in_free_text_are_kept_verbatim():
    assert fill("{sent} Please output segmentation mask.", sent="a {seg} {class_name} {0} }{") == \
        "a {seg} {class_name} {0} }{ Please output segmentation mask."
    assert fill("{class_name} is {seg}.", class_name="{seg}", seg="S") == "{seg} is S."


def test_bad_flags_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="sample_rates"):
        make(tmp_path, "sem_seg||vqa")
    with pytest.raises(ValueError, match="unknown data types"):
        make(tmp_path, "segmentation")
    fx.write_ade20k(str(tmp_path), n=1)
    with pytest.raises(ValueError, match="--sem_seg_data"):
        make(tmp_path, "sem_seg", sem_seg_data="ade21k")
