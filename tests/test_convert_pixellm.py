"""model.convert_pixellm on a tiny checkpoint in the original PixelLM's released ``hf_model`` layout.

The source is ``tests/fixtures/pixellm_ref`` (written by the original code: 264 bf16 tensors, LlamaConfig with
``model_type: llava``, the slow LLaMA tokenizer files with [SEG0..5] and <im_start>/<im_end>, a tiny 336 px
CLIP folder). ``test_pixellm_parity.py`` compares the converted model's numbers with the original's; this file
checks the conversion itself: key mapping, files, tokenizer behaviour, dtypes, permissions and errors.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from child_process import child_env
from model import PixelLMConfig, PixelLMForCausalLM, PixelLMImageProcessor
from model.convert_pixellm import DROPPED_KEYS, convert, map_key
from model.model_folder import current_umask
from model.processing_pixellm import SAM_MEAN, SAM_STD
from model.tokenization import load_tokenizer
from model.tokens import resolve_token_ids, seg_group_text

FIXTURE = Path(__file__).parent / "fixtures" / "pixellm_ref"
ROOT = Path(__file__).resolve().parents[1]
VOCAB, H, C_VIS = 456, 64, 32


def source_state() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURE / "hf_model" / "pytorch_model.bin", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the converter's command line once on the fixture, as a user would (default --dtype auto)."""
    out = tmp_path_factory.mktemp("convert") / "converted"
    env = child_env()
    cmd = [sys.executable, "-m", "model.convert_pixellm", "--src", str(FIXTURE / "hf_model"), "--clip", str(FIXTURE / "clip"), "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"source": source_state(), "out": out}


def saved_state(out: Path) -> dict[str, torch.Tensor]:
    state = {}
    for file in sorted(out.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def test_fixture_matches_its_key_list() -> None:
    listed = [line.split("\t") for line in (FIXTURE / "keys.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert [(k, tuple(json.loads(shape))) for k, shape, _ in listed] == [(k, tuple(v.shape)) for k, v in source_state().items()]


def test_every_key_mapped_or_dropped_and_every_tensor_filled(converted: dict) -> None:
    source, out = converted["source"], converted["out"]
    mapped = {k: map_key(k) for k in source}
    dropped = sorted(k for k, v in mapped.items() if v is None)
    assert len(dropped) == 2 + 4 + 1 + 10 + 3 * 6 + 6  # inv_freq, points, not-a-point, mask downscaling, hypernets 1-3, iou head
    assert all(any(re.match(p, k) for p, _ in DROPPED_KEYS) for k in dropped)
    state = saved_state(out)
    config = json.loads((out / "config.json").read_text())
    with torch.device("meta"):
        expected = PixelLMForCausalLM(PixelLMConfig.from_dict(config)).state_dict()
    assert set(state) == set(expected)
    targets = {v for v in mapped.values() if v is not None}
    assert targets | {k for k in expected if k.startswith("vision_tower.")} | {"seg_codebook.token_weights", "pixel_decoder.scale_weights"} == set(expected)


def test_weights_land_in_the_right_place(converted: dict) -> None:
    source, state = converted["source"], saved_state(converted["out"])
    pairs = {
        "pixel_decoder.transformer.1.layers.0.mlp.lin1.weight": "model.mask_decoder.transformer.1.layers.0.mlp.lin1.weight",
        "pixel_decoder.transformer.0.final_attn_token_to_image.q_proj.bias": "model.mask_decoder.transformer.0.final_attn_token_to_image.q_proj.bias",
        "pixel_decoder.output_hypernetwork.layers.2.weight": "model.mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
        "pixel_decoder.pe_layers.0.positional_encoding_gaussian_matrix": "model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "pixel_decoder.pe_layers.1.positional_encoding_gaussian_matrix": "model.mask_decoder.pe1.positional_encoding_gaussian_matrix",
        "pixel_decoder.no_mask_embed.weight": "model.prompt_encoder.no_mask_embed.weight",
        "pixel_decoder.level_embed.weight": "model.mask_decoder.level_embed.weight",
        "image_feature_neck.layers.2.weight": "model.image_feature_neck.2.weight",
        "image_feature_neck.layers.3.bias": "model.image_feature_neck.3.bias",
        "seg_codebook.text_hidden_fcs.2.weight": "model.text_hidden_fcs.0.2.weight",
        "out_mm_projector.0.weight": "model.out_mm_projector.0.weight",
        "language_model.model.layers.1.mlp.down_proj.weight": "model.layers.1.mlp.down_proj.weight",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(state[ours], source[theirs]), ours
    for ours, theirs in (("language_model.model.embed_tokens.weight", "model.embed_tokens.weight"), ("language_model.lm_head.weight", "lm_head.weight")):
        assert state[ours].shape == (VOCAB + 1, H)
        assert torch.equal(state[ours][:VOCAB], source[theirs])
        torch.testing.assert_close(state[ours][VOCAB].float(), source[theirs].float().mean(0), atol=1e-2, rtol=0)
    assert torch.equal(state["seg_codebook.token_weights"].float(), torch.full((2, 3), 1 / 6).to(torch.bfloat16).float())
    assert torch.equal(state["pixel_decoder.scale_weights"].float(), torch.full((2,), 0.5))


def test_dtype_auto_stores_everything_in_the_sources_dtype(converted: dict) -> None:
    """--dtype auto rounds the float32 CLIP to the LLM's bf16 (documented in --help); float32 is one flag away."""
    state = saved_state(converted["out"])
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    assert "float32" in subprocess.run(
        [sys.executable, "-m", "model.convert_pixellm", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout


def test_saved_files_follow_the_umask(converted: dict) -> None:
    mask = current_umask()
    for path in converted["out"].iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


def test_clip_positions_resized_as_the_original(converted: dict) -> None:
    """The original resizes P[0:576] (CLS row included) as the 24x24 grid and appends P[576] at the end."""
    clip = torch.load(FIXTURE / "clip" / "pytorch_model.bin", map_location="cpu", weights_only=True)
    old = clip["vision_model.embeddings.position_embedding.weight"].float()  # [1 + 24*24, C]
    new = saved_state(converted["out"])["vision_tower.embeddings.position_embedding.weight"].float()  # [1 + 32*32, C]
    bf16 = lambda x: x.to(torch.bfloat16).float()  # noqa: E731
    assert new.shape == (1 + 32 * 32, C_VIS)
    assert torch.equal(new[-1], bf16(old[-1]))
    # Bilinear 24 -> 32, align_corners=False: output (0, 0) samples source (-0.125, -0.125), clamped to row 0.
    assert torch.equal(new[0], bf16(old[0]))
    # Output (0, 1) samples x = 1.5 * 0.75 - 0.5 = 0.625 between grid cells 0 and 1 = rows 0 and 1.
    torch.testing.assert_close(new[1], bf16(0.375 * old[0] + 0.625 * old[1]), atol=2e-2, rtol=0)


def test_config_tokenizer_and_processor(converted: dict) -> None:
    out = converted["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["compat_clip_pos_embed_shift"] is True and config["compat_fixed_fusion"] is True
    assert config["seg_token_ids"] == list(range(448, 454))
    assert (config["im_start_token_id"], config["im_end_token_id"], config["image_token_id"]) == (454, 455, 456)
    assert config["vision_feature_layers"] == [-2, -11] and config["vision_config"]["image_size"] == 448
    tokenizer = load_tokenizer(out)
    ids = resolve_token_ids(tokenizer, 6)
    assert (ids.im_start, ids.im_end, ids.image, ids.seg) == (454, 455, 456, tuple(range(448, 454)))
    processor = PixelLMImageProcessor.from_pretrained(out)
    assert (processor.image_size, processor.image_mean, processor.image_std, processor.alpha) == (448, SAM_MEAN, SAM_STD, "drop")


def original_tokens(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("reload", [False, True])
def test_converted_tokenizer_splits_as_the_originals_slow_tokenizer(converted: dict, tmp_path: Path, reload: bool) -> None:
    """Dummy prefix at the start and after every added token, whitespace on both sides of added tokens dropped:
    as transformers 4.31's slow LLaMA tokenizer did, also after a save and reload."""
    tokenizer = load_tokenizer(converted["out"])
    if reload:
        tokenizer.save_pretrained(tmp_path)
        tokenizer = load_tokenizer(tmp_path)
    seg = seg_group_text(6)
    assert original_tokens(tokenizer, "What is it")[0] == "▁What"
    assert original_tokens(tokenizer, f"It is {seg}. It is {seg}, It") == [
        "▁It", "▁is", *[f"[SEG{i}]" for i in range(6)], "▁", ".", "▁It", "▁is", *[f"[SEG{i}]" for i in range(6)], "▁", ",", "▁It",
    ]
    assert original_tokens(tokenizer, "USER: <im_start><im_end>\nWhat") == ["▁USER", ":", "<im_start>", "<im_end>", "▁What"]


def test_converted_model_runs_forward_and_generation(converted: dict) -> None:
    from model.conversation import Turn, tokenize_conversation

    out = converted["out"]
    model = PixelLMForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(out)
    processor = PixelLMImageProcessor.from_pretrained(out)
    ids = resolve_token_ids(tokenizer, model.config.tokens_per_target)
    image = torch.randint(0, 255, (60, 80, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy()
    batch = processor([image])
    answer = f"The circle is {seg_group_text(6)} and the square is {seg_group_text(6)}."
    conv = tokenize_conversation(tokenizer, [Turn("<image>\nSegment the circle and the square.", answer)], ids, model.config.num_image_tokens)
    with torch.no_grad():
        output = model(
            input_ids=torch.tensor([conv.input_ids]), labels=torch.tensor([conv.labels]), pixel_values=batch["pixel_values"],
            clip_resize=batch["clip_resize"], masks_list=[torch.zeros(2, 60, 80)],
        )
    assert output.pred_masks[0].shape == (2, 60, 80) and torch.isfinite(output.loss)
    prompt = tokenize_conversation(tokenizer, [Turn("<image>\nSegment the circle.")], ids, model.config.num_image_tokens)
    generated = model.generate_with_masks(
        torch.tensor([prompt.input_ids]), pixel_values=batch["pixel_values"], clip_resize=batch["clip_resize"],
        original_sizes=batch["original_sizes"], max_new_tokens=4,
    )
    assert 1 <= len(generated.sequences[0]) <= 4 and generated.pred_masks[0].shape[1:] == (60, 80)


def modified_source(folder: Path, change) -> Path:
    """A copy of the fixture's hf_model whose state dict went through ``change``."""
    shutil.copytree(FIXTURE / "hf_model", folder)
    state = source_state()
    change(state)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    src = modified_source(tmp_path / "src", lambda s: s.update({"model.mask_decoder.extra_head.weight": torch.zeros(4, 4)}))
    with pytest.raises(ValueError, match="extra_head"):
        convert(str(src), str(FIXTURE / "clip"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_key_is_an_error(tmp_path: Path) -> None:
    src = modified_source(tmp_path / "src", lambda s: s.pop("model.mask_decoder.level_embed.weight"))
    with pytest.raises(ValueError, match=r"unfilled.*pixel_decoder\.level_embed\.weight"):
        convert(str(src), str(FIXTURE / "clip"), str(tmp_path / "out"))


def test_clip_with_another_patch_size_is_an_error(tmp_path: Path) -> None:
    """The original hard-codes patch 14 (32x32 grid at 448 px): a patch-16 CLIP would silently give 28x28 tokens."""
    clip = tmp_path / "clip16"
    shutil.copytree(FIXTURE / "clip", clip)
    config = json.loads((clip / "config.json").read_text())
    config.update(patch_size=16, image_size=320)
    (clip / "config.json").write_text(json.dumps(config))
    state = torch.load(clip / "pytorch_model.bin", map_location="cpu", weights_only=True)
    state["vision_model.embeddings.patch_embedding.weight"] = torch.zeros(C_VIS, 3, 16, 16)
    state["vision_model.embeddings.position_embedding.weight"] = torch.zeros(20 * 20 + 1, C_VIS)
    state.pop("vision_model.embeddings.position_ids", None)
    torch.save(state, clip / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"patch size 16.*hard-codes patch 14"):
        convert(str(FIXTURE / "hf_model"), str(clip), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
