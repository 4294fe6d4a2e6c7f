"""chat.py: one-shot mode (a real subprocess, and in-process with a forced answer so masks exist) and the
interactive loop driven through stdin."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import chat
from child_process import child_env
from forced_answers import ForcedAnswers, answer_ids
from model.tiny import build_tiny
from serving.export import load_masks_from_json
from serving.predictor import PixelLMPredictor
from serving.terminal_chat import TerminalChatConfig, format_answer, interactive, supports_color

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "kitchen.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch):
    """Make every predictor chat.py loads answer with the given texts, one per question."""
    hooks = []

    def install(*texts: str) -> None:
        original = PixelLMPredictor.from_pretrained.__func__

        def loaded(cls, *args, **kwargs):
            predictor = original(cls, *args, **kwargs)
            scripts = [[answer_ids(predictor.tokenizer, t)] for t in texts]
            hooks.append(ForcedAnswers(predictor.model, scripts).__enter__())
            return predictor

        monkeypatch.setattr(PixelLMPredictor, "from_pretrained", classmethod(loaded))

    yield install
    for hook in hooks:
        hook.__exit__(None, None, None)


def test_one_shot_subprocess_writes_json_and_overlay(tiny_dir: Path, image_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = child_env(NO_COLOR="1")
    cmd = [sys.executable, "chat.py", "--version", str(tiny_dir), "--image", str(image_path), "--query", "Segment the pan.",
           "--out_dir", str(out), "--max_new_tokens", "16", "--precision", "fp32"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ASSISTANT: ") and "\x1b[" not in result.stdout
    record = json.loads((out / "kitchen.json").read_text())
    assert record["question"] == "Segment the pan."
    assert (out / "kitchen_overlay.png").is_file()
    assert len(list(out.glob("kitchen_mask_*.png"))) == len(record["targets"])


def test_one_shot_masks_round_trip_through_rle(tiny_dir: Path, image_path: Path, tmp_path: Path, forced, capsys) -> None:
    forced("The pan{S} and the lid{S}.")
    out = tmp_path / "out"
    code = chat.main(["--version", str(tiny_dir), "--image", str(image_path), "--query", "Segment the pan and the lid.", "--out_dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "The pan[0] and the lid[1]." in printed and "[1] lid" in printed
    record = json.loads((out / "kitchen.json").read_text())
    assert [t["phrase"] for t in record["targets"]] == ["pan", "lid"]
    masks = load_masks_from_json(out / "kitchen.json")
    assert len(masks) == 2
    for j, mask in enumerate(masks):
        png = np.asarray(Image.open(out / f"kitchen_mask_{j}.png"))
        assert png.shape == (48, 64) and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, mask)


def test_interactive_switches_image_and_keeps_history(
    tiny_dir: Path, image_path: Path, tmp_path: Path, forced, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced("The pan{S}.", "The lid{S}.")
    other = tmp_path / "garden.png"
    Image.new("RGB", (30, 20), (10, 200, 10)).save(other)
    lines = ["What is here?", f"image: {tmp_path / 'missing.png'}", f"image: {other}", f"image: {image_path}",
             "Segment the pan.", "", "And the lid?", "exit", "never read"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    out = tmp_path / "out"
    assert chat.main(["--version", str(tiny_dir), "--out_dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no image yet" in captured.err and "missing.png': no such file" in captured.err
    assert "image loaded:" in captured.out and "(64x48)" in captured.out
    assert "ASSISTANT: The pan.\n  [0] pan  score" in captured.out and "ASSISTANT: The lid.\n  [0] lid  score" in captured.out
    assert [t["phrase"] for t in json.loads((out / "kitchen_001.json").read_text())["targets"]] == ["pan"]
    second = json.loads((out / "kitchen_002.json").read_text())
    assert second["question"] == "And the lid?" and [t["phrase"] for t in second["targets"]] == ["lid"]
    assert np.asarray(Image.open(out / "kitchen_002_mask_0.png")).shape == (48, 64)


def test_interactive_prints_the_answer_as_it_is_generated(tiny_dir: Path, image_path: Path, tmp_path: Path) -> None:
    class Recorder(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return super().write(text)

    predictor = PixelLMPredictor.from_pretrained(tiny_dir)
    out = Recorder()
    config = TerminalChatConfig(out_dir=tmp_path, max_new_tokens=40)
    with ForcedAnswers(predictor.model, [[answer_ids(predictor.tokenizer, "The pan{S} and the lid{S} are on the table, side by side.")]]):
        code = interactive(predictor, config, io.StringIO("Where are they?\n"), out, io.StringIO(), image=str(image_path))
    assert code == 0
    start = out.writes.index("ASSISTANT: ")
    end = out.writes.index("\n", start)
    pieces = out.writes[start + 1 : end]
    assert len(pieces) > 2 and "".join(pieces) == "The pan and the lid are on the table, side by side."
    assert "[0] pan  score" in out.getvalue() and "[1] lid  score" in out.getvalue()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seg_token_num", "1"], "seg_token_num=1 was asked for"),
        (["--image_feature_scale_num", "3"], "image_feature_scale_num=3 was asked for"),
        (["--image_size", "1024"], "no separate SAM input"),
        (["--conv_type", "llava_llama_2"], "only llava_v1"),
        (["--load_in_8bit", "--device", "cpu"], "need a CUDA GPU"),
        (["--query", "Hi"], "--query needs --image"),
    ],
)
def test_flags_that_do_not_apply_are_refused(tiny_dir: Path, flags: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        chat.main(["--version", str(tiny_dir), *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_colours_follow_the_terminal(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = PixelLMPredictor.from_pretrained(tiny_dir)
    predictor.set_image(np.zeros((20, 30, 3), dtype=np.uint8))
    with ForcedAnswers(predictor.model, [[answer_ids(predictor.tokenizer, "The cat{S} and the dog{S}.")]]):
        answer = predictor.ask("Segment them.", max_new_tokens=30)
    coloured = format_answer(answer, color=True)
    assert "\x1b[1;38;2;230;159;0mcat\x1b[0m" in coloured  # target 0: #E69F00
    assert "\x1b[1;38;2;86;180;233mdog\x1b[0m" in coloured  # target 1: #56B4E9
    assert "\x1b[" not in format_answer(answer, color=False)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert supports_color(Tty()) and not supports_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not supports_color(Tty())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max_batch_size", "0"], "--max_batch_size must be positive"),
        (["--port", "70000"], "--port must be 0..65535"),
        (["--examples_dir", "/no/such/folder"], "is not a folder"),
    ],
)
def test_app_flags_that_cannot_work_are_refused(tiny_dir: Path, flags: list[str], message: str, capsys) -> None:
    import app

    with pytest.raises(SystemExit) as info:
        app.main(["--version", str(tiny_dir), *flags])
    assert info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app.main(["--version", str(tiny_dir / "missing")])
    assert "no config.json there" in capsys.readouterr().err
