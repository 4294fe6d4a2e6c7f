"""Parity with the ORIGINAL PixelLM, measured on its own numbers.

``tests/fixtures/pixellm_ref`` holds a tiny random checkpoint in the release format (the original's merged
``hf_model`` folder and a tiny 336 px CLIP), three images, and arrays that the original code computed on them
in float32 (its README states every formula and tolerance). The checkpoint is converted with
``model.convert_pixellm --dtype float32`` and every reference array is compared, through the public API, in
the order the computation produces them, so a re-implementation that is off fails on the first array that
differs, with its name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import PixelLMForCausalLM, PixelLMImageProcessor
from model.conversation import Turn, tokenize_conversation
from model.convert_pixellm import convert
from model.seg_codebook import find_seg_groups
from model.tokenization import load_tokenizer
from model.tokens import resolve_token_ids
from model.vision_tower import encode_levels, patch_validity
from serving.image_io import ImageLoadConfig, load_image

FIXTURE = Path(__file__).parent / "fixtures" / "pixellm_ref"
TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3
# The original marks the image in input_ids with this id; ours writes num_image_tokens <image> ids there.
ORIGINAL_IMAGE_INDEX = -200


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = convert(str(FIXTURE / "hf_model"), str(FIXTURE / "clip"), str(tmp_path_factory.mktemp("parity") / "converted"), "float32")
    model = PixelLMForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(out)
    processor = PixelLMImageProcessor.from_pretrained(out)
    cases = json.loads((FIXTURE / "refs" / "cases.json").read_text())
    return SimpleNamespace(
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        token_ids=resolve_token_ids(tokenizer, model.config.tokens_per_target),
        cases=cases,
        diffs={},
    )


def expect_close(name: str, ours: torch.Tensor | np.ndarray, theirs: np.ndarray, tolerance: float, table: dict) -> None:
    ours = torch.as_tensor(ours).detach().float().cpu().numpy()
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape}, the original's {theirs.shape}"
    diff = float(np.abs(ours - theirs.astype(np.float32)).max()) if theirs.size else 0.0
    table[name] = diff
    assert diff <= tolerance, f"{name}: max abs difference {diff:.3g} from the original's, tolerance {tolerance:g}"


def expect_equal(name: str, ours, theirs) -> None:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs), (
        f"{name}: differs from the original's (shape {ours.shape} vs {theirs.shape}; "
        f"first index that differs: {np.argwhere(ours != theirs)[:1].tolist() if ours.shape == theirs.shape else 'n/a'})"
    )


def ours_ids(original_ids: list[int], image_token_id: int, num_image_tokens: int, values: list[int] | None = None) -> list[int]:
    """The original's ids with its single -200 image marker written as our ``num_image_tokens`` image ids
    (with ``values``: the per-token values, e.g. an attention mask, expanded the same way)."""
    out: list[int] = []
    for i, token in enumerate(original_ids):
        value = image_token_id if values is None else values[i]
        out.extend([value] * num_image_tokens if token == ORIGINAL_IMAGE_INDEX else [token if values is None else value])
    return out


def read_image(ref: SimpleNamespace, relative: str) -> np.ndarray:
    return load_image(FIXTURE / relative, ImageLoadConfig(alpha=ref.processor.alpha))


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_converted_folder_keeps_the_originals_settings(ref: SimpleNamespace) -> None:
    config = ref.model.config
    assert config.compat_clip_pos_embed_shift and config.compat_fixed_fusion
    assert list(config.seg_token_ids) == ref.cases["seg_token_ids"]
    assert (ref.token_ids.im_start, ref.token_ids.im_end) == (ref.cases["im_start_id"], ref.cases["im_end_id"])
    assert ref.processor.alpha == "drop"


def test_clip_position_table_is_the_originals(ref: SimpleNamespace) -> None:
    expected = ref.cases["clip_resized_position_embedding"]
    table = ref.model.vision_tower.embeddings.position_embedding.weight.detach().float().numpy()
    assert list(table.shape) == expected["shape"]
    for row, values in expected["rows"].items():
        expect_close(f"clip_resized_position_embedding[{row}]", table[int(row)], np.asarray(values, dtype=np.float32), 1e-6, {})
    assert sha256(table) == expected["sha256_float32"], "clip_resized_position_embedding: sha256 differs from the original's"


@pytest.mark.parametrize("image", ["img_a", "img_b", "img_c"])
def test_preprocessing_is_the_originals(ref: SimpleNamespace, image: str) -> None:
    expected = ref.cases["preprocessing"][image]
    rgb = read_image(ref, expected["image"])
    assert list(rgb.shape[:2]) == expected["original_size"]
    resized = ref.processor.resize(rgb)
    expect_equal(f"{image} resized rows", resized[::4], np.load(FIXTURE / "refs" / f"preproc_{image}.npz")["clip_resized_uint8_every4th_row"])
    assert sha256(resized) == expected["sha256_resized_uint8_hwc"], f"{image}: the resized uint8 image differs from the original's"
    processed = ref.processor.preprocess(rgb)
    assert list(processed.clip_resize) == expected["clip_resize"]
    assert sha256(processed.pixel_values.numpy()) == expected["sha256_images_clip_float32_nchw"], f"{image}: images_clip differs"


def teacher_forced_cases() -> list[str]:
    return [case["name"] for case in json.loads((FIXTURE / "refs" / "cases.json").read_text())["teacher_forced"]]


@pytest.mark.parametrize("name", teacher_forced_cases())
def test_teacher_forced_arrays_match_the_original(ref: SimpleNamespace, name: str) -> None:
    case = next(c for c in ref.cases["teacher_forced"] if c["name"] == name)
    arrays = np.load(FIXTURE / "refs" / f"{name}.npz")
    model, config, table = ref.model, ref.model.config, ref.diffs.setdefault(name, {})
    n_img = config.num_image_tokens

    turns = [Turn(f"<image>\n{q}", a) for q, a in zip(case["questions"], case["answers"])]
    prompt = tokenize_conversation(ref.tokenizer, turns, ref.token_ids, n_img).input_ids
    input_ids = [ours_ids(row, config.image_token_id, n_img) for row in case["input_ids"]]
    expect_equal("input_ids (our chat template and tokenizer)", [prompt], input_ids)

    rgb = read_image(ref, case["image"])
    processed = ref.processor.preprocess(rgb)
    pixel_values = processed.pixel_values[None]
    clip_resize = torch.tensor([processed.clip_resize])
    ids = torch.tensor(input_ids)
    text_mask = torch.tensor(
        [ours_ids(row, 1, n_img, mask) for row, mask in zip(case["input_ids"], arrays["attention_masks"].astype(int).tolist())]
    )
    with torch.no_grad():
        features = model.encode_images(pixel_values, clip_resize)
        row_image = torch.zeros(ids.shape[0], dtype=torch.long)
        _, llm_mask = model.embed_inputs(ids, text_mask, features.select(row_image))
        expect_equal("llm_attention_mask_expanded", llm_mask.bool().numpy(), arrays["llm_attention_mask_expanded"])

        valid = patch_validity(clip_resize, config.image_size, config.vision_grid)
        levels = encode_levels(model.vision_tower, pixel_values, valid, list(config.vision_feature_layers))
        expect_close("clip_feat_layer_m2_first64", levels[0][0, :64], arrays["clip_feat_layer_m2_first64"], TOLERANCE, table)
        expect_close("clip_feat_layer_m11_first64", levels[1][0, :64], arrays["clip_feat_layer_m11_first64"], TOLERANCE, table)
        expect_close("llm_image_tokens_first64", features.llm_embeds[0, :64], arrays["llm_image_tokens_first64"], TOLERANCE, table)

        out = model(input_ids=ids, attention_mask=text_mask, image_features=features, original_sizes=torch.tensor([rgb.shape[:2]]))
        expect_close("llm_last_hidden", out.last_hidden_state, arrays["llm_last_hidden"], TOLERANCE, table)
        start = case["first_text_position_after_image"]
        vocab = arrays["logits_after_image"].shape[-1]
        expect_close("logits_after_image", out.logits[:, start:, :vocab], arrays["logits_after_image"], LOGIT_TOLERANCE, table)

        groups = find_seg_groups(ids, model.seg_token_ids, config.tokens_per_target)
        states = groups.predicting_states(out.last_hidden_state)
        after_fcs = model.seg_codebook.text_hidden_fcs(states).reshape(-1, config.out_dim)
        expect_close("seg_hidden_after_fcs", after_fcs, arrays["seg_hidden_after_fcs"], TOLERANCE, table)
        prompts = model.seg_codebook(states)
        expect_close("pred_embeddings", prompts, arrays["pred_embeddings"], TOLERANCE, table)

        model.add_decoder_features(features)
        expect_close("neck_out_ch0to3", features.decoder_features[0, :, :4], arrays["neck_out_ch0to3"], TOLERANCE, table)
        per_target = features.decoder_features[row_image[groups.rows]]
        level0 = model.pixel_decoder.predict_level(0, per_target[:, 0], prompts[:, 0])
        expect_close("decoder_level0_masks", level0, arrays["decoder_level0_masks"], TOLERANCE, table)
        low_res = model.pixel_decoder(per_target, prompts)
        expect_close("low_res_masks_fused", low_res[:, None], arrays["low_res_masks_fused"], TOLERANCE, table)

    ours_masks, theirs = out.pred_masks[0].numpy(), arrays["pred_masks"]
    expect_close("pred_masks", ours_masks, theirs, TOLERANCE, table)
    decided = np.abs(theirs) > TOLERANCE
    expect_equal("pred_masks > 0 (pixels whose logit is not within the tolerance of 0)", (ours_masks > 0)[decided], (theirs > 0)[decided])
    assert out.seg_counts.tolist() == case["num_targets_per_conversation"]


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_greedy_generation_matches_the_original(ref: SimpleNamespace, index: int, use_cache: bool) -> None:
    case = ref.cases["free_generation"][index]
    model, n_img = ref.model, ref.model.config.num_image_tokens
    prompt = tokenize_conversation(ref.tokenizer, [Turn(f"<image>\n{case['user_text']}")], ref.token_ids, n_img).input_ids
    expect_equal(f"free_generation[{index}] prompt ids", prompt, ours_ids(case["input_ids"], model.config.image_token_id, n_img))
    processed = ref.processor.preprocess(read_image(ref, case["image"]))
    out = model.generate_with_masks(
        input_ids=torch.tensor([prompt]),
        pixel_values=processed.pixel_values[None],
        clip_resize=torch.tensor([processed.clip_resize]),
        original_sizes=torch.tensor([case["original_size"]]),
        max_new_tokens=case["max_new_tokens"],
        use_cache=use_cache,
    )
    expect_equal(f"free_generation[{index}] generated_ids", out.sequences[0], case["generated_ids"])
    assert out.pred_masks[0].shape[0] == case["num_masks"]


def test_seg_group_in_the_prompt_gives_the_originals_mask(ref: SimpleNamespace) -> None:
    """The original's evaluate() also decodes seg groups already in the prompt; our teacher-forced forward gives
    the same mask for them, and generation continues with the same tokens (its masks are the answer's only)."""
    case = ref.cases["evaluate_seg_prefix"][0]
    arrays = np.load(FIXTURE / "refs" / "evaluate_seg_prefix_img_a.npz")
    model, n_img, table = ref.model, ref.model.config.num_image_tokens, ref.diffs.setdefault("evaluate_seg_prefix", {})
    rgb = read_image(ref, case["image"])
    processed = ref.processor.preprocess(rgb)
    ids = torch.tensor([ours_ids(case["input_ids"], model.config.image_token_id, n_img)])
    sizes = torch.tensor([rgb.shape[:2]])
    with torch.no_grad():
        features = model.encode_images(processed.pixel_values[None], torch.tensor([processed.clip_resize]))
        out = model(input_ids=ids, image_features=features, original_sizes=sizes)
        groups = find_seg_groups(ids, model.seg_token_ids, model.config.tokens_per_target)
        prompts = model.seg_codebook(groups.predicting_states(out.last_hidden_state))
    expect_close("pred_embeddings", prompts, arrays["pred_embeddings"], TOLERANCE, table)
    expect_close("pred_masks", out.pred_masks[0], arrays["pred_masks"], TOLERANCE, table)
    generated = model.generate_with_masks(input_ids=ids, image_features=features, original_sizes=sizes, max_new_tokens=case["max_new_tokens"])
    expect_equal("evaluate_seg_prefix generated ids", generated.sequences[0], case["generated_ids"])
    assert generated.pred_masks[0].shape[0] == 0


def test_two_padded_conversations_in_one_batch(ref: SimpleNamespace) -> None:
    """Two conversations about one image, right-padded with the pad id as the original's collate does: the
    longer one still gives the original's arrays, the shorter one what it gives alone."""
    model, n_img = ref.model, ref.model.config.num_image_tokens
    a, c = (next(x for x in ref.cases["teacher_forced"] if x["name"] == name) for name in ("tf_a_1target", "tf_c_1target"))
    rows = [ours_ids(case["input_ids"][0], model.config.image_token_id, n_img) for case in (a, c)]
    length = max(map(len, rows))
    ids = torch.tensor([row + [ref.tokenizer.pad_token_id] * (length - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])
    rgb = read_image(ref, a["image"])
    processed = ref.processor.preprocess(rgb)
    arrays = np.load(FIXTURE / "refs" / "tf_a_1target.npz")
    with torch.no_grad():
        features = model.encode_images(processed.pixel_values[None], torch.tensor([processed.clip_resize]))
        kwargs = dict(image_features=features, original_sizes=torch.tensor([rgb.shape[:2]]))
        batch = model(input_ids=ids, attention_mask=mask, offset=torch.tensor([0, 2]), **kwargs)
        alone = model(input_ids=ids[1:, : len(rows[1])], **kwargs)
    table = ref.diffs.setdefault("padded_batch", {})
    expect_close("llm_last_hidden (row 0)", batch.last_hidden_state[:1], arrays["llm_last_hidden"], TOLERANCE, table)
    expect_close("pred_masks (row 0)", batch.pred_masks[0][:1], arrays["pred_masks"], TOLERANCE, table)
    valid = len(rows[1])
    expect_close("llm_last_hidden (row 1)", batch.last_hidden_state[1, :valid], alone.last_hidden_state[0].numpy(), TOLERANCE, table)
    expect_close("pred_masks (row 1)", batch.pred_masks[0][1:], alone.pred_masks[0].numpy(), TOLERANCE, table)


def test_parity_table(ref: SimpleNamespace) -> None:
    """Every array of every teacher-forced case was compared (run with -s to print the measured differences)."""
    if set(ref.diffs) < {"tf_a_1target", "tf_b_3targets", "tf_c_1target"}:
        pytest.skip("run the whole file: the comparison tests fill the table")
    arrays = {"clip_feat_layer_m2_first64", "clip_feat_layer_m11_first64", "llm_image_tokens_first64", "llm_last_hidden",
              "logits_after_image", "seg_hidden_after_fcs", "pred_embeddings", "neck_out_ch0to3", "decoder_level0_masks",
              "low_res_masks_fused", "pred_masks"}
    for case in ("tf_a_1target", "tf_b_3targets", "tf_c_1target"):
        assert set(ref.diffs[case]) == arrays, case
    lines = [f"{case:22s} {array:32s} {diff:.3g}" for case, compared in ref.diffs.items() for array, diff in compared.items()]
    print("\ncase                   array                            max abs diff\n" + "\n".join(lines))
