"""The CLIP vision tower: resized position embeddings, a key-padding mask, several feature levels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel


def patch_validity(clip_resize: torch.Tensor, image_size: int, grid: int) -> torch.Tensor:
    """clip_resize [B, 2] -> bool [B, grid, grid]: the padded S x S validity mask, nearest-resized to the grid."""
    src = torch.div(torch.arange(grid, device=clip_resize.device) * image_size, grid, rounding_mode="floor")
    rows = src[None, :] < clip_resize[:, 0:1]
    cols = src[None, :] < clip_resize[:, 1:2]
    return rows[:, :, None] & cols[:, None, :]


def encode_levels(
    clip: CLIPVisionModel, pixel_values: torch.Tensor, valid: torch.Tensor, layers: list[int]
) -> list[torch.Tensor]:
    """Run CLIP with padded patches masked out as keys; return the patch tokens of each hidden-state index.

    pixel_values: [B, 3, S, S]; valid: bool [B, g, g]; layers: hidden-state indices as in transformers
    (0 = embeddings, -1 = last layer). Returns one [B, g*g, C_vis] tensor per entry of ``layers``.
    Layers after the deepest one requested are not run.
    """
    num_layers = len(clip.encoder.layers)
    wanted = [i % (num_layers + 1) for i in layers]
    hidden = clip.pre_layrnorm(clip.embeddings(pixel_values.to(clip.dtype)))
    keep = torch.cat([valid.new_ones(valid.shape[0], 1), valid.flatten(1)], dim=1)
    mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
    mask = mask.masked_fill(~keep, torch.finfo(hidden.dtype).min)[:, None, None, :]
    states = {0: hidden}
    for i, layer in enumerate(clip.encoder.layers[: max(wanted)]):
        hidden = layer(hidden, mask)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        states[i + 1] = hidden
    return [states[i][:, 1:] for i in wanted]


def resize_position_embeddings(clip: CLIPVisionModel, image_size: int, compat_shift: bool = False) -> CLIPVisionModel:
    """A copy of ``clip`` for ``image_size`` input, its position grid resized bilinearly.

    With P the old table [1 + g*g, C] (row 0 = CLS), the default keeps P[0] for CLS and resizes
    P[1:] as the g x g grid. With ``compat_shift`` the original PixelLM's resize is reproduced, which its
    released weights were trained with: it resizes P[0 : g*g] as the grid (CLS row included, last patch
    row left out) and appends P[g*g] at the END, so position p reads ``new[p]``: CLS reads the first grid
    cell and patch j reads ``new[j + 1]``.
    """
    old = clip.embeddings.position_embedding.weight.detach()
    old_grid = int(round((old.shape[0] - 1) ** 0.5))
    new_grid = image_size // clip.config.patch_size

    def resized_grid(rows: torch.Tensor) -> torch.Tensor:
        grid = rows.float().reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bilinear", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(old.dtype)

    if compat_shift:
        table = torch.cat([resized_grid(old[:-1]), old[-1:]], dim=0)
    else:
        table = torch.cat([old[:1], resized_grid(old[1:])], dim=0)
    config = CLIPVisionConfig(**{**clip.config.to_dict(), "image_size": image_size})
    resized = CLIPVisionModel(config).to(old.dtype)
    state = {k: v for k, v in clip.state_dict().items() if "position_embedding" not in k and "position_ids" not in k}
    state["embeddings.position_embedding.weight"] = table
    missing, unexpected = resized.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"resizing CLIP lost keys: missing {missing}, unexpected {unexpected}")
    return resized
