"""The PixelLM model wiring: shapes, gradients, seg-token gathering, losses, save/load, generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from model import PixelLMForCausalLM, PixelLMImageProcessor
from model.conversation import IGNORE_INDEX, Turn, tokenize_conversation
from model.losses import refinement_per_mask
from model.seg_codebook import find_seg_groups
from model.tiny import build_tiny
from model.tokenization import load_tokenizer
from model.tokens import resolve_token_ids, seg_group_text
from model.vision_tower import encode_levels, patch_validity, resize_position_embeddings


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"), seed=0, corpus=["the red circle and the blue star"])


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    model = PixelLMForCausalLM.from_pretrained(tiny_dir).eval()
    tokenizer = load_tokenizer(tiny_dir)
    processor = PixelLMImageProcessor.from_pretrained(tiny_dir)
    return model, tokenizer, processor, resolve_token_ids(tokenizer, model.config.tokens_per_target)


def make_batch(tiny, answers: list[str], sizes: list[tuple[int, int]], seed: int = 0) -> dict:
    """One conversation per image; masks are random 0/1 (one per seg group)."""
    model, tokenizer, processor, ids = tiny
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    batch = processor(images)
    convs = [
        tokenize_conversation(tokenizer, [Turn("<image>\nSegment the shapes.", a)], ids, model.config.num_image_tokens)
        for a in answers
    ]
    t = max(len(c.input_ids) for c in convs)
    batch["input_ids"] = torch.full((len(convs), t), tokenizer.pad_token_id)
    batch["labels"] = torch.full((len(convs), t), IGNORE_INDEX)
    batch["attention_mask"] = torch.zeros((len(convs), t), dtype=torch.long)
    for i, c in enumerate(convs):
        batch["input_ids"][i, : len(c.input_ids)] = torch.tensor(c.input_ids)
        batch["labels"][i, : len(c.labels)] = torch.tensor(c.labels)
        batch["attention_mask"][i, : len(c.input_ids)] = 1
    seg = torch.tensor(ids.seg)
    counts = [int(torch.isin(row, seg).sum()) // len(ids.seg) for row in batch["input_ids"]]
    g = torch.Generator().manual_seed(seed)
    batch["masks_list"] = [torch.randint(0, 2, (n, h, w), generator=g).float() for n, (h, w) in zip(counts, sizes)]
    return batch


def test_shapes_one_and_three_targets_non_square(tiny):
    model, _, _, _ = tiny
    s = seg_group_text(model.config.tokens_per_target)
    answers = [f"The red circle {s}.", f"The red circle {s}, the blue star {s} and the square {s}."]
    sizes = [(90, 210), (260, 120)]
    batch = make_batch(tiny, answers, sizes)
    features = model.encode_images(batch["pixel_values"], batch["clip_resize"])
    cfg = model.config
    assert features.llm_embeds.shape == (2, cfg.num_image_tokens, cfg.text_config.hidden_size)
    assert features.llm_valid.shape == (2, cfg.num_image_tokens)
    assert features.decoder_features.shape == (2, 2, cfg.out_dim, cfg.vision_grid, cfg.vision_grid)
    # a wide image pads its bottom rows: the last row of LLM tokens is padding, the first is not
    grid = features.llm_valid.reshape(2, cfg.llm_grid, cfg.llm_grid)
    assert grid[0, 0].all() and not grid[0, -1].any() and grid[1, :, 0].all() and not grid[1, :, -1].any()
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, cfg.text_config.vocab_size)
    assert [tuple(m.shape) for m in out.pred_masks] == [(1, 90, 210), (3, 260, 120)]
    assert out.seg_counts.tolist() == [1, 3]
    assert torch.isfinite(out.loss) and out.loss > 0
    assert out.refine_loss is not None and out.ce_loss > 0 and out.bce_loss > 0 and out.dice_loss > 0
    low = model.pixel_decoder(features.decoder_features[[0, 0]], torch.zeros(2, 2, cfg.out_dim))
    assert low.shape == (2, cfg.low_res_mask_size, cfg.low_res_mask_size)


def test_gradients_reach_trainable_parts_not_the_frozen_tower(tiny_dir, tiny):
    model = PixelLMForCausalLM.from_pretrained(tiny_dir).train()
    model.vision_tower.requires_grad_(False)
    s = seg_group_text(model.config.tokens_per_target)
    batch = make_batch(tiny, [f"It is {s}.", f"A {s} and B {s}."], [(100, 140), (140, 100)])
    model(**batch).loss.backward()
    named = dict(model.named_parameters())
    for name in [
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.layers.1.self_attn.v_proj.weight",
        "language_model.lm_head.weight",
        "mm_projector.0.weight",
        "out_mm_projector.2.weight",
        "seg_codebook.text_hidden_fcs.0.weight",
        "seg_codebook.token_weights",
        "image_feature_neck.layers.0.weight",
        "pixel_decoder.transformer.1.layers.0.self_attn.q_proj.weight",
        "pixel_decoder.output_hypernetwork.layers.0.weight",
        "pixel_decoder.scale_weights",
    ]:
        grad = named[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.vision_tower.parameters())


def test_seg_gathering_picks_the_predicting_positions():
    seg = torch.tensor([50, 51, 52, 53, 54, 55])
    row0 = [1, 7, 8, 50, 51, 52, 53, 54, 55, 9, 10, 50, 51, 52, 53, 54, 55, 11]
    row1 = [1, 7, 50, 51, 52, 53, 54, 55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    groups = find_seg_groups(torch.tensor([row0, row1]), seg, 6)
    assert groups.counts.tolist() == [2, 1]
    assert groups.rows.tolist() == [0, 0, 1]
    assert groups.predicting_positions.tolist() == [
        [2, 3, 4, 5, 6, 7],
        [10, 11, 12, 13, 14, 15],
        [1, 2, 3, 4, 5, 6],
    ]


def test_target_count_drops_the_remainder(caplog):
    seg = torch.tensor([50, 51, 52, 53, 54, 55])
    row = [1] + [50, 51, 52, 53, 54, 55] * 2 + [50, 51, 52] + [2]
    groups = find_seg_groups(torch.tensor([row]), seg, 6)
    assert groups.counts.tolist() == [2]
    assert "not a multiple of K=6" in caplog.text
    none = find_seg_groups(torch.tensor([[1, 2, 3]]), seg, 6)
    assert none.counts.tolist() == [0] and none.predicting_positions.shape == (0, 6)


def test_mask_count_mismatch_is_a_clear_error(tiny):
    model = tiny[0]
    s = seg_group_text(model.config.tokens_per_target)
    batch = make_batch(tiny, [f"A {s} and B {s}."], [(80, 80)])
    batch["masks_list"] = [batch["masks_list"][0][:1]]
    with pytest.raises(ValueError, match="2 seg groups but 1 masks"):
        model(**batch)


def test_save_load_gives_identical_logits_and_masks(tiny, tmp_path):
    model = tiny[0]
    s = seg_group_text(model.config.tokens_per_target)
    batch = make_batch(tiny, [f"It is {s}.", f"A {s} and B {s}."], [(70, 130), (130, 70)])
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(tmp_path)
    reloaded = PixelLMForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = reloaded(**batch)
    assert torch.equal(before.logits, after.logits)
    for a, b in zip(before.pred_masks, after.pred_masks):
        assert torch.equal(a, b)


def test_postprocess_returns_masks_aligned_with_the_original_image():
    processor = PixelLMImageProcessor(image_size=224)
    height, width = 100, 200
    clip_resize = processor.resized_size(height, width)
    assert clip_resize == (112, 224)
    # a rectangle in original pixels, drawn in the padded square's low-res grid
    top, bottom, left, right = 20, 60, 50, 120
    low = 64
    scale = clip_resize[1] / width * low / 224
    logits = torch.full((1, low, low), -10.0)
    logits[0, round(top * scale) : round(bottom * scale), round(left * scale) : round(right * scale)] = 10.0
    mask = processor.postprocess_masks(logits, clip_resize, (height, width))[0] > 0
    assert mask.shape == (height, width)
    expected = torch.zeros(height, width, dtype=torch.bool)
    expected[top:bottom, left:right] = True
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou > 0.9


def test_processor_pads_bottom_right_with_zeros():
    processor = PixelLMImageProcessor(image_size=224)
    image = np.full((50, 100, 3), 200, dtype=np.uint8)
    out = processor.preprocess(image)
    assert out.clip_resize == (112, 224) and out.original_size == (50, 100)
    assert out.pixel_values.shape == (3, 224, 224)
    assert (out.pixel_values[:, 112:] == 0).all() and (out.pixel_values[:, :112] != 0).all()


def test_refinement_loss_zero_without_overlap_positive_with_it():
    targets = torch.zeros(2, 8, 8)
    targets[0, :, :4] = 1
    targets[1, :, 4:] = 1
    apart = torch.full((2, 8, 8), -5.0)
    apart[0, :, :4] = 5.0
    apart[1, :, 4:] = 5.0
    assert refinement_per_mask(apart, targets, [2]).sum() == 0
    overlapping = apart.clone()
    overlapping[1, :, 2:] = 5.0
    assert refinement_per_mask(overlapping, targets, [2]).sum() > 0
    # masks of different questions never count as overlapping
    assert refinement_per_mask(overlapping, targets, [1, 1]).sum() == 0


def test_clip_padding_mask_keeps_padding_out_of_valid_features():
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=56, patch_size=14)).eval()
    valid = patch_validity(torch.tensor([[28, 56]]), 56, 4)
    pixels = torch.randn(1, 3, 56, 56)
    changed = pixels.clone()
    changed[:, :, 28:] = torch.randn(1, 3, 28, 56)
    with torch.no_grad():
        a = encode_levels(clip, pixels, valid, [-1])[0].reshape(1, 4, 4, -1)
        b = encode_levels(clip, changed, valid, [-1])[0].reshape(1, 4, 4, -1)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-5)
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_position_embedding_resize_and_compat_shift():
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=42, patch_size=14))
    old = clip.embeddings.position_embedding.weight.detach().clone()  # [1 + 3*3, 32]

    def bilinear(rows: torch.Tensor) -> torch.Tensor:
        grid = rows.T.reshape(1, 32, 3, 3)
        return torch.nn.functional.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False).reshape(32, 36).T

    resized = resize_position_embeddings(clip, 84).embeddings.position_embedding.weight.detach()
    assert resized.shape == (1 + 36, 32)
    assert torch.equal(resized[0], old[0]) and torch.allclose(resized[1:], bilinear(old[1:]), atol=1e-6)
    # The original's table: rows 0..g*g-1 (CLS row included) resized as the grid, the last row appended at the end.
    shifted = resize_position_embeddings(clip, 84, compat_shift=True).embeddings.position_embedding.weight.detach()
    assert torch.allclose(shifted[:-1], bilinear(old[:-1]), atol=1e-6) and torch.equal(shifted[-1], old[-1])
    assert torch.equal(resize_position_embeddings(clip, 84).embeddings.patch_embedding.weight, clip.embeddings.patch_embedding.weight)
    for compat in (False, True):
        same = resize_position_embeddings(clip, 42, compat_shift=compat).embeddings.position_embedding.weight.detach()
        assert torch.allclose(same, old, atol=1e-6)


def test_generation_never_emits_the_image_placeholder(tiny):
    """<image> only marks where image features go; even when its lm_head row wins, generation skips it."""
    model, tokenizer, processor, ids = tiny
    batch = processor([np.random.default_rng(3).integers(0, 255, (40, 60, 3), dtype=np.uint8)])
    prompt = tokenize_conversation(tokenizer, [Turn("<image>\nSegment it.")], ids, model.config.num_image_tokens)
    kwargs = dict(input_ids=torch.tensor([prompt.input_ids]), max_new_tokens=6, **{k: batch[k] for k in ("pixel_values", "clip_resize", "original_sizes")})
    head = model.get_output_embeddings().weight
    saved = head[ids.image].detach().clone()
    with torch.no_grad():
        head[ids.image] = 50 * head.abs().max() * torch.sign(model(**{k: v for k, v in kwargs.items() if k != "max_new_tokens"}).last_hidden_state[0, -1])
    try:
        with torch.no_grad():
            logits = model(**{k: v for k, v in kwargs.items() if k != "max_new_tokens"}).logits[0, -1]
        assert logits.argmax() == ids.image  # the placeholder would win greedy decoding
        generated = model.generate_with_masks(**kwargs).sequences[0]
    finally:
        with torch.no_grad():
            head[ids.image] = saved
    assert generated and ids.image not in generated


# Pillow 13.0.0's Image.resize(BILINEAR) of pattern(h, w) to (h', w'); for (1000, 37) and (997, 120) Pillow 12 differs.
PILLOW13_RESIZE_SHA256 = {
    (1000, 37, 448, 17): "5a18d069b0b936360fd6de9173566b8da38ab15c7603d60491d5e61b2f2f2ad1",
    (600, 333, 448, 249): "cef836f1e95b809350bc7a168ae3763d1c392e99daa84ce14679424155b2f1d2",
    (150, 230, 292, 448): "b1fe98d6b66fafd67975bafc20ae5e98e9245d89e8935d62a8e2b9126a3ac08b",
    (180, 470, 172, 448): "e966467201212ef84230d60fc524fcb91c19bff71e9e49fc202bf00bc17e1892",
    (997, 120, 448, 54): "623b248920f6191c3ad95f954521abc14c1bddcc0aab286d7f24605e873c38f2",
}


@pytest.mark.parametrize("shape", list(PILLOW13_RESIZE_SHA256))
def test_resize_gives_pillow13_bytes_whatever_pillow_is_installed(shape):
    import hashlib

    from model.processing_pixellm import resize_bilinear

    h, w, new_h, new_w = shape
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([(x * 7 + y * 13) % 256, (x * x + 3 * y) % 251, (x * y + 5 * x) % 241], axis=-1).astype(np.uint8)
    resized = resize_bilinear(image, (new_h, new_w))
    assert resized.shape == (new_h, new_w, 3)
    assert hashlib.sha256(resized.tobytes()).hexdigest() == PILLOW13_RESIZE_SHA256[shape]
    assert PixelLMImageProcessor(image_size=448).resized_size(h, w) == (new_h, new_w)


def test_tiny_tokenizer_splits_like_a_llama_tokenizer(tiny):
    """Dummy prefix at the start and after added tokens, whitespace next to added tokens dropped."""
    _, tokenizer, _, ids = tiny
    seg = seg_group_text(len(ids.seg))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(f"the circle {seg} and the star {seg}.", add_special_tokens=False).input_ids)
    first = tokens.index("[SEG0]")
    assert tokens[0].startswith("▁") and tokens[first - 1] == "▁circle" and tokens[first + len(ids.seg)].startswith("▁and")
    assert tokenizer(f"x {seg}", add_special_tokens=False).input_ids[-len(ids.seg):] == list(ids.seg)
    assert tokenizer.convert_ids_to_tokens(tokenizer("USER: <im_start><im_end>\nthe", add_special_tokens=False).input_ids)[-3:] == [
        "<im_start>", "<im_end>", "▁the",
    ]


def test_generation_with_cache_equals_without_and_returns_masks(tiny):
    model, tokenizer, processor, ids = tiny
    image = np.random.default_rng(1).integers(0, 255, (90, 150, 3), dtype=np.uint8)
    batch = processor([image])
    prompt = tokenize_conversation(tokenizer, [Turn("<image>\nSegment the red circle.")], ids, model.config.num_image_tokens)
    kwargs = dict(
        input_ids=torch.tensor([prompt.input_ids]),
        pixel_values=batch["pixel_values"],
        clip_resize=batch["clip_resize"],
        original_sizes=batch["original_sizes"],
        max_new_tokens=24,
    )
    cached = model.generate_with_masks(**kwargs)
    uncached = model.generate_with_masks(**kwargs, use_cache=False)
    assert cached.sequences == uncached.sequences and len(cached.sequences[0]) > 0
    assert len(cached.pred_masks) == 1 and cached.pred_masks[0].shape[1:] == (90, 150)


def test_generation_masks_equal_teacher_forced_masks(tiny):
    """Masks decoded from states collected while generating equal a teacher-forced pass over the same text."""
    model, tokenizer, processor, ids = tiny
    s = seg_group_text(model.config.tokens_per_target)
    image = np.random.default_rng(2).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    batch = processor([image])
    prompt = tokenize_conversation(tokenizer, [Turn("<image>\nSegment it.")], ids, model.config.num_image_tokens)
    answer = tokenizer(f" The circle {s} and the star {s}.", add_special_tokens=False).input_ids
    # force the answer by making it the greedy choice: bias lm_head towards the scripted tokens
    full = torch.tensor([prompt.input_ids + answer])
    with torch.no_grad():
        forced = model(input_ids=full, **{k: batch[k] for k in ("pixel_values", "clip_resize", "original_sizes")})
    states_masks = forced.pred_masks[0]
    assert states_masks.shape == (2, 80, 120)
    scripted = iter(answer + [tokenizer.eos_token_id])
    original_head = model.get_output_embeddings()

    class ScriptedHead(torch.nn.Module):
        def forward(self, hidden):
            logits = original_head(hidden)
            token = next(scripted)
            out = torch.full_like(logits, -1e4)
            out[..., token] = 0
            return out

    model.set_output_embeddings(ScriptedHead())
    try:
        gen = model.generate_with_masks(
            input_ids=torch.tensor([prompt.input_ids]), max_new_tokens=len(answer) + 1,
            **{k: batch[k] for k in ("pixel_values", "clip_resize", "original_sizes")},
        )
    finally:
        model.set_output_embeddings(original_head)
    assert gen.sequences[0] == answer + [tokenizer.eos_token_id]
    assert torch.allclose(gen.pred_masks[0], states_masks, atol=1e-4)
