"""The lightweight two-level pixel decoder: CLIP features + seg embeddings -> mask logits.

Per level l a SAM-style two-way transformer reads the tokens [iou token, mask tokens, seg prompt of level l]
(+ ``level_embed[l]``) against the level's neck features (+ ``no_mask_embed``, random-Fourier positions);
mask token 0's hypernetwork output, dotted with the upscaled image features, is the level's mask. Level 1 runs
on 2x upsampled features gated by sigmoid(m0) + 1. Output: the weighted sum of both levels at 4g x 4g.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pixellm import PixelLMConfig
from .two_way_transformer import MLP, LayerNorm2d, PositionEmbeddingRandom, TwoWayTransformer


class FeatureNeck(nn.Module):
    """Conv1x1(H->D) - LayerNorm2d - Conv3x3(D->D) - LayerNorm2d, shared by all levels: [B, H, g, g] -> [B, D, g, g]."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, dim, kernel_size=1, bias=False),
            LayerNorm2d(dim),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PixelDecoder(nn.Module):
    """Decodes N targets at once from per-level image features and per-level seg embeddings.

    Level 0 runs a two-way transformer over the g x g grid and predicts m0 at 2g; level 1 upsamples its
    features to 2g, gates them with sigmoid(m0) + 1, and predicts m1 at 4g. The output is the weighted
    sum of the levels at the finest resolution.
    """

    def __init__(self, config: PixelLMConfig) -> None:
        super().__init__()
        if config.image_feature_scale_num not in (1, 2):
            raise ValueError(f"image_feature_scale_num must be 1 or 2, got {config.image_feature_scale_num}")
        dim, levels = config.out_dim, config.image_feature_scale_num
        self.num_levels = levels
        self.grid = config.vision_grid
        self.transformer = nn.ModuleList(
            TwoWayTransformer(
                config.decoder_depth, dim, config.decoder_num_heads, config.decoder_mlp_dim, config.decoder_attention_downsample
            )
            for _ in range(levels)
        )
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(config.num_mask_tokens, dim)
        self.level_embed = nn.Embedding(levels, dim)
        self.no_mask_embed = nn.Embedding(1, dim)
        self.pe_layers = nn.ModuleList(PositionEmbeddingRandom(dim // 2) for _ in range(levels))
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2), LayerNorm2d(dim // 8), nn.GELU()
        )
        self.output_hypernetwork = MLP(dim, dim, dim // 8, 3)
        if levels == 2:
            self.upsample_2x = nn.Sequential(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2), LayerNorm2d(dim), nn.GELU())
        if config.compat_fixed_fusion:
            self.register_buffer("scale_weights", torch.full((levels,), 0.5 if levels == 2 else 1.0))
        else:
            self.scale_weights = nn.Parameter(torch.full((levels,), 1.0 / levels))

    def predict_level(self, level: int, src: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """src: [N, D, h, w]; prompt: [N, D] -> mask logits [N, 1, 2h, 2w]."""
        n, _, h, w = src.shape
        tokens = torch.cat(
            [self.iou_token.weight, self.mask_tokens.weight], dim=0
        ).unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([tokens, prompt[:, None]], dim=1) + self.level_embed.weight[level]
        src = src + self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        pos = self.pe_layers[level]((h, w)).unsqueeze(0).expand(n, -1, -1, -1)
        tokens_out, image_out = self.transformer[level](src, pos, tokens)
        upscaled = self.output_upscaling(image_out.transpose(1, 2).reshape(n, -1, h, w))
        hyper = self.output_hypernetwork(tokens_out[:, 1])
        return (hyper[:, None] @ upscaled.flatten(2)).reshape(n, 1, 2 * h, 2 * w)

    def forward(self, features: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """features: [N, L, D, g, g] (neck output of each target's image); prompts: [N, L, D] -> logits [N, 4g, 4g] (2g for L = 1)."""
        m0 = self.predict_level(0, features[:, 0], prompts[:, 0])
        if self.num_levels == 1:
            return m0[:, 0]
        src1 = self.upsample_2x(features[:, 1]) * (torch.sigmoid(m0) + 1)
        m1 = self.predict_level(1, src1, prompts[:, 1])
        m0_up = F.interpolate(m0, size=m1.shape[-2:], mode="bilinear", align_corners=False)
        return (self.scale_weights[0] * m0_up + self.scale_weights[1] * m1)[:, 0]
