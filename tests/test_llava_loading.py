"""model.loading.load_pretrained on tiny folders in the LLaVA-v1, llava-hf (older and newer key layouts)
and PixelLM layouts: LLM (and llava-hf CLIP) weights carried over, tokens added, a training step runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from model import PixelLMForCausalLM
from model.conversation import SYSTEM_PROMPT, Turn, tokenize_conversation
from model.loading import load_pretrained
from model.model_folder import detect_layout, read_config
from model.processing_pixellm import PixelLMImageProcessor
from model.tokenization import load_tokenizer
from model.tokens import resolve_token_ids, seg_group_text

H, C_VIS = 64, 32
VISION = {"hidden_size": C_VIS, "intermediate_size": 64, "num_hidden_layers": 12, "num_attention_heads": 4, "patch_size": 14, "image_size": 336}


def byte_level_tokenizer(extra_special: list[str]) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (no PixelLM tokens yet) with ``extra_special`` added as special tokens."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([SYSTEM_PROMPT, " USER: ASSISTANT: Segment the circle. It is"] * 5, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if extra_special:
        tokenizer.add_tokens(extra_special, special_tokens=True)
    return tokenizer


def llama_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=H, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CLIPModel]:
    """A full CLIPModel folder (text + vision) at 336 px, as openai/clip-vit-large-patch14-336 is."""
    torch.manual_seed(2)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 99},
        vision_config=VISION, projection_dim=16,
    )
    clip = CLIPModel(config).eval()
    folder = tmp_path_factory.mktemp("clip")
    clip.save_pretrained(folder)
    return folder, clip


@pytest.fixture(scope="module")
def llava_v1_folder(tmp_path_factory: pytest.TempPathFactory, clip_folder: tuple[Path, CLIPModel]) -> tuple[Path, LlamaForCausalLM]:
    """The original LLaVA layout: LlamaForCausalLM keys + a single-Linear model.mm_projector, two .bin shards."""
    folder = tmp_path_factory.mktemp("llava_v1")
    tokenizer = byte_level_tokenizer([])
    torch.manual_seed(3)
    llm = LlamaForCausalLM(llama_config(len(tokenizer))).eval()
    state = dict(llm.state_dict())
    state["model.mm_projector.weight"] = torch.randn(H, C_VIS)
    state["model.mm_projector.bias"] = torch.randn(H)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.randn(8)
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    for name, shard_keys in shards.items():
        torch.save({k: state[k].clone() for k in shard_keys}, folder / name)
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        **llm.config.to_dict(), "model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": str(clip_folder[0]),
        "mm_hidden_size": C_VIS, "mm_vision_select_layer": -2, "mm_use_im_start_end": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    return folder, llm


def write_llava_hf(folder: Path, newer_layout: bool) -> LlavaForConditionalGeneration:
    """A llava-hf folder (save_pretrained); with ``newer_layout`` its keys are rewritten to the transformers>=4.52 names."""
    tokenizer = byte_level_tokenizer(["<image>", "<pad>"])
    torch.manual_seed(4)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION), text_config=llama_config(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    llava = LlavaForConditionalGeneration(config).eval()
    llava.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if newer_layout:
        state = load_file(folder / "model.safetensors")
        renamed = {}
        for key, value in state.items():
            key = key.replace("language_model.model.", "model.language_model.").replace("language_model.lm_head.", "lm_head.")
            key = key.replace("vision_tower.", "model.vision_tower.vision_model.").replace("multi_modal_projector.", "model.multi_modal_projector.")
            renamed[key] = value.contiguous()
        assert any(k.startswith("model.language_model.") for k in renamed) and "lm_head.weight" in renamed
        save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    return llava


def one_image() -> dict[str, torch.Tensor]:
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    return PixelLMImageProcessor(image_size=448)([image])


def assert_text_logits_equal(model: PixelLMForCausalLM, source_logits: torch.Tensor, input_ids: torch.Tensor) -> None:
    with torch.no_grad():
        ours = model(input_ids=input_ids, **{k: v for k, v in one_image().items() if k != "original_sizes"}).logits
    assert ours.shape[-1] > source_logits.shape[-1]
    torch.testing.assert_close(ours[..., : source_logits.shape[-1]], source_logits, atol=1e-5, rtol=1e-5)


def assert_training_step(model: PixelLMForCausalLM, tokenizer) -> None:
    model.train()
    ids = resolve_token_ids(tokenizer, model.config.tokens_per_target)
    conv = tokenize_conversation(
        tokenizer, [Turn("<image>\nSegment the circle.", f"It is {seg_group_text(model.config.tokens_per_target)}.")], ids, model.config.num_image_tokens
    )
    batch = one_image()
    out = model(
        input_ids=torch.tensor([conv.input_ids]), labels=torch.tensor([conv.labels]), pixel_values=batch["pixel_values"],
        clip_resize=batch["clip_resize"], masks_list=[(torch.rand(1, 50, 70) > 0.5).float()],
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.bce_loss > 0
    for module in (model.pixel_decoder, model.mm_projector, model.seg_codebook):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_llava_v1_layout(llava_v1_folder, clip_folder, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    folder, llm = llava_v1_folder
    source_vocab = llm.config.vocab_size
    with caplog.at_level(logging.INFO, logger="model"):
        model, tokenizer, processor = load_pretrained(str(folder), torch.float32, vision_tower=str(clip_folder[0]), seg_token_num=3, image_feature_scale_num=2)
    assert detect_layout(folder, read_config(folder)) == "llava_v1"
    assert "mm_projector: freshly initialised" in caplog.text
    assert len(tokenizer) == source_vocab + 9 == model.get_input_embeddings().weight.shape[0]
    assert model.config.seg_token_ids == [tokenizer.convert_tokens_to_ids(f"[SEG{i}]") for i in range(6)]
    assert model.config.vision_feature_layers == [-2, -11] and processor.image_size == 448
    assert model.mm_projector[0].weight.shape == (2 * H, C_VIS)
    fresh = [*model.mm_projector.parameters(), *model.pixel_decoder.parameters(), *model.image_feature_neck.parameters()]
    assert all(torch.isfinite(p).all() for p in fresh)
    assert 0.01 < model.mm_projector[0].weight.std() < 1  # PyTorch's default init, not uninitialised memory
    clip = clip_folder[1].vision_model
    assert torch.equal(model.vision_tower.encoder.layers[3].mlp.fc1.weight, clip.encoder.layers[3].mlp.fc1.weight)
    assert torch.equal(model.vision_tower.embeddings.position_embedding.weight[0], clip.embeddings.position_embedding.weight[0])
    input_ids = torch.tensor([tokenizer("A chat between a human and an assistant.").input_ids])
    with torch.no_grad():
        source_logits = llm(input_ids=input_ids).logits
    assert_text_logits_equal(model.eval(), source_logits, input_ids)
    assert_training_step(model, tokenizer)

    # The result saves as a PixelLM folder and reloads through the pixellm layout.
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, reloaded_tokenizer, _ = load_pretrained(str(tmp_path), torch.float32, seg_token_num=3, image_feature_scale_num=2, ce_loss_weight=0.5)
    assert reloaded.config.ce_loss_weight == 0.5 and len(reloaded_tokenizer) == len(tokenizer)
    assert torch.equal(reloaded.pixel_decoder.level_embed.weight, model.pixel_decoder.level_embed.weight)
    with pytest.raises(ValueError, match="seg_token_num=4 was asked for"):
        load_pretrained(str(tmp_path), torch.float32, seg_token_num=4, image_feature_scale_num=2)


@pytest.mark.parametrize("newer_layout", [False, True], ids=["older-keys", "newer-keys"])
def test_llava_hf_layout(tmp_path: Path, newer_layout: bool, caplog: pytest.LogCaptureFixture) -> None:
    llava = write_llava_hf(tmp_path, newer_layout)
    image_id = llava.config.image_token_index
    with caplog.at_level(logging.INFO, logger="model"):
        model, tokenizer, _ = load_pretrained(str(tmp_path), torch.float32, seg_token_num=3, image_feature_scale_num=2)
    assert detect_layout(tmp_path, read_config(tmp_path)) == "llava_hf"
    assert "mm_projector: freshly initialised" in caplog.text
    assert model.config.image_token_id == image_id  # the folder's <image> is reused, not added again
    assert len(tokenizer) == llava.config.text_config.vocab_size + 8
    source_clip = llava.model.vision_tower
    assert torch.equal(model.vision_tower.encoder.layers[5].self_attn.q_proj.weight, source_clip.encoder.layers[5].self_attn.q_proj.weight)
    old_pos, new_pos = source_clip.embeddings.position_embedding.weight, model.vision_tower.embeddings.position_embedding.weight
    assert new_pos.shape[0] == 1 + 32 * 32 and torch.equal(new_pos[0], old_pos[0])  # CLS stays row 0 (no compat shift)
    input_ids = torch.tensor([tokenizer("Segment the circle.").input_ids])
    with torch.no_grad():
        source_logits = llava(input_ids=input_ids).logits
    assert_text_logits_equal(model.eval(), source_logits, input_ids)
    assert_training_step(model, tokenizer)


def test_llava_hf_in_bfloat16(tmp_path: Path) -> None:
    write_llava_hf(tmp_path, newer_layout=True)
    model, tokenizer, _ = load_pretrained(str(tmp_path), torch.bfloat16, seg_token_num=3, image_feature_scale_num=2)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(torch.isfinite(p).all() for p in model.pixel_decoder.parameters())
    input_ids = torch.tensor([tokenizer("Segment the circle.").input_ids])
    with torch.no_grad():
        logits = model(input_ids=input_ids, **{k: v for k, v in one_image().items() if k != "original_sizes"}).logits
    assert torch.isfinite(logits.float()).all()


def test_llava_hf_projector_reused_when_shapes_match(tmp_path: Path) -> None:
    llava = write_llava_hf(tmp_path, newer_layout=False)
    model, _, _ = load_pretrained(str(tmp_path), torch.float32, seg_token_num=3, image_feature_scale_num=2, mm_projector_hidden_mult=1)
    projector = llava.model.multi_modal_projector
    assert torch.equal(model.mm_projector[0].weight, projector.linear_1.weight)
    assert torch.equal(model.mm_projector[2].bias, projector.linear_2.bias)


def test_unknown_layouts_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(str(tmp_path), torch.float32, seg_token_num=3, image_feature_scale_num=2)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"config.json has model_type 'bert'"):
        load_pretrained(str(tmp_path), torch.float32, seg_token_num=3, image_feature_scale_num=2)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "hidden_size": 8, "train_mask_decoder": True}))
    with pytest.raises(ValueError, match="convert_pixellm"):
        detect_layout(tmp_path, read_config(tmp_path))


FIXTURE = Path(__file__).parent / "fixtures" / "pixellm_ref"


@pytest.mark.parametrize("legacy_key", [True, False], ids=["legacy-true", "no-legacy-key"])
def test_llava_v1_sentencepiece_tokenizer_gives_the_originals_prompt_ids(tmp_path: Path, legacy_key: bool) -> None:
    """A LLaVA-v1 folder with a slow LLaMA tokenizer (tokenizer.model, as LLaVA-7B ships it; here the one of the
    reference checkpoint without its added tokens): prompts built by our template have exactly the ids the
    original PixelLM's slow tokenizer produced (its dummy prefix at the start and after added tokens, the
    whitespace next to added tokens dropped), also after the tokenizer is saved and reloaded. A folder without
    a "legacy" key gets the slow tokenizer's old default, the dummy prefix."""
    tokenizer_config = json.loads((FIXTURE / "hf_model" / "tokenizer_config.json").read_text())
    if not legacy_key:
        tokenizer_config.pop("legacy")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name in ("tokenizer.model", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((FIXTURE / "hf_model" / name).read_bytes())
    llm = LlamaForCausalLM(llama_config(448))
    save_file({k: v.contiguous() for k, v in llm.state_dict().items()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = {**llm.config.to_dict(), "model_type": "llava", "mm_vision_tower": str(FIXTURE / "clip"), "mm_hidden_size": C_VIS}
    (tmp_path / "config.json").write_text(json.dumps(config))

    model, tokenizer, _ = load_pretrained(str(tmp_path), torch.float32, seg_token_num=3, image_feature_scale_num=2)
    cases = json.loads((FIXTURE / "refs" / "cases.json").read_text())
    ids = resolve_token_ids(tokenizer, 6)
    assert (ids.seg, ids.im_start, ids.im_end) == (tuple(cases["seg_token_ids"]), cases["im_start_id"], cases["im_end_id"])
    tokenizer.save_pretrained(tmp_path / "saved")
    for tok in (tokenizer, load_tokenizer(tmp_path / "saved")):
        for case in cases["teacher_forced"]:
            turns = [Turn(f"<image>\n{q}", a) for q, a in zip(case["questions"], case["answers"])]
            ours = tokenize_conversation(tok, turns, ids, 1).input_ids
            assert [ids.image if t == -200 else t for t in case["input_ids"][0]] == ours, case["name"]
        for case in cases["free_generation"]:
            ours = tokenize_conversation(tok, [Turn(f"<image>\n{case['user_text']}")], ids, 1).input_ids
            assert [ids.image if t == -200 else t for t in case["input_ids"]] == ours, case["user_text"]
