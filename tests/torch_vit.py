"""A test-local PyTorch ViT with timm's ``VisionTransformer`` parameter names and forward (written
from timm's ``vision_transformer.py``, not imported: timm is not a dependency).

Pre-norm blocks (``norm1`` -> ``attn.qkv``/``attn.proj`` -> residual, ``norm2`` -> ``mlp.fc1`` ->
exact GELU -> ``mlp.fc2`` -> residual), LayerNorm eps 1e-6, a class token and learned ``pos_embed``
added to it and every patch, a final ``norm``; no dropout, drop-path or layer scale (timm's defaults).
``global_pool="token"`` pools the class token, ``"avg"`` the mean of the patch tokens; as in timm,
``"avg"`` replaces ``norm`` by an ``fc_norm`` after pooling unless ``fc_norm=False``.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-6


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), patches row-major


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, fc_norm: bool | None = None):
        super().__init__()
        self.global_pool = global_pool
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=EPS)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=EPS) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# timm's model names -> (embed_dim, depth, num_heads, patch_size, img_size)
TIMM_SIZES = {"vit_tiny_patch16_224": (192, 12, 3, 16, 224), "vit_small_patch16_224": (384, 12, 6, 16, 224),
              "vit_base_patch16_224": (768, 12, 12, 16, 224)}


def create_model(name: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    """timm.create_model for the ViTs above: the name's sizes, overridden by ``kwargs``."""
    dim, depth, heads, patch, size = TIMM_SIZES[name]
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, img_size=size)
    return VisionTransformer(**{**args, **kwargs})


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights of a trained-like scale: Linear/conv ~ N(0, 1/fan_in), LayerNorm scale ~ 1 + N(0, 0.1^2),
    biases, tokens and position embeddings ~ N(0, 0.1^2) (seeded; in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2 and name not in ("cls_token", "pos_embed"):
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):  # LayerNorm scale
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()
