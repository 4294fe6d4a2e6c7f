"""demo.write_overview: MUSE val questions' ground truth next to chat.py's saved answers, one row each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_fixtures import REPO
from dataset.image_io import read_rgb
from dataset.multi_reason_seg import load_muse, muse_image_path, question_masks, target_name
from demo.plots import write_overview
from demo.recipe import first_question_with_targets
from serving.export import ExportTarget, save_answer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("overview_world") / "data"
    subprocess.run([sys.executable, "-m", "dataset.synthetic", "--out", str(data), "--train", "2", "--val", "3", "--preset", "demo"],
                   cwd=REPO, check=True, capture_output=True)
    return data


def answered(world: Path, out: Path, count: int) -> list[tuple[dict, int, Path]]:
    """Save the ground truth of the first question with targets of ``count`` val images as chat.py would save an answer."""
    examples = []
    for i, item in enumerate(load_muse(str(world), "val")[:count]):
        q = first_question_with_targets(item)
        image_path = Path(muse_image_path(str(world), item))
        image = read_rgb(str(image_path))
        anns = item["answers"][q]
        masks = question_masks(anns, image.shape[0], image.shape[1])
        targets = [ExportTarget(target_name(a, None), mask.astype(bool), 1.0) for a, mask in zip(anns, masks)]
        save_answer(out / f"{i:02d}", image_path.stem, image, item["questions"][q], "the answer", targets)
        examples.append((item, q, out / f"{i:02d}"))
    return examples


def test_one_row_per_example(world: Path, tmp_path: Path) -> None:
    heights = []
    for count in (1, 3):
        out = tmp_path / f"overview_{count}.png"
        write_overview(world, answered(world, tmp_path / f"examples_{count}", count), out)
        image = read_rgb(str(out))
        assert image.shape[1] == 900
        assert image.std() > 10, "the overview is blank"
        heights.append(image.shape[0])
    assert heights[1] == 3 * heights[0]


def test_missing_answer_names_the_file(world: Path, tmp_path: Path) -> None:
    (item, q, folder), = answered(world, tmp_path / "examples", 1)
    for path in folder.glob("*.json"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="is missing: chat.py --image"):
        write_overview(world, [(item, q, folder)], tmp_path / "overview.png")
