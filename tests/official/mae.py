"""MAE's official pre-training step, re-written in PyTorch from facebookresearch/mae.

Mirrors:

* ``models_mae.py``: ``MaskedAutoencoderViT`` (``__init__``'s modules and names: ``patch_embed``,
  ``cls_token``, fixed ``pos_embed``, ``blocks``, ``norm``, ``decoder_embed``, ``mask_token``, fixed
  ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``; LayerNorm eps 1e-6 as
  the ``mae_vit_*`` constructors), ``patchify``, ``random_masking``, ``forward_encoder``,
  ``forward_decoder``, ``forward_loss`` (with ``norm_pix_loss``: per-patch mean and unbiased
  ``var``) and ``forward``.
* ``main_pretrain.py``: ``args.lr = args.blr * eff_batch_size / 256``, ``param_groups =
  optim_factory.add_weight_decay(model_without_ddp, args.weight_decay)`` (timm's: parameters without
  ``requires_grad`` left out; 1-D parameters and ``.bias`` without decay, every other one with it)
  and ``torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95))``.
* ``engine_pretrain.py`` ``train_one_epoch`` (``accum_iter`` 1): per iteration
  ``lr_sched.adjust_learning_rate(optimizer, data_iter_step / len(data_loader) + epoch, args)``, the
  loss, backward, step, ``optimizer.zero_grad()``; ``util/lr_sched.py`` ``adjust_learning_rate``
  (linear warm-up from 0, then a half-cycle cosine to ``min_lr``).

Differences, on purpose:

* The random mask is an input: ``random_masking`` draws ``noise = torch.rand(N, L)`` and keeps the
  patches of the smallest noise; here the caller passes ``noise`` (the test: the rank of each patch
  in the shuffle our ``random_masking`` drew from the step's key, ``ssl4eo_jax.methods.base.method_key``),
  so both sides mask the same patches; everything after the draw is the official code.
* ``patchify`` reshapes to the image's own channel count; the official hard-codes 3 (RGB).
* The transformer blocks and the patch embedding are tests/torch_vit.py's stand-ins for timm's
  ``Block`` and ``PatchEmbed`` (the same parameter names and forward; qkv bias, exact GELU).
* No mixed precision (``autocast``/``NativeScaler``; no gradient clipping by default); one process.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from tests.torch_vit import EPS, Block, PatchEmbed


class MaskedAutoencoderViT(nn.Module):
    """``models_mae.py`` ``MaskedAutoencoderViT`` (weights are the caller's: ``initialize_weights`` is not run)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4., norm_pix_loss: bool = False):
        super().__init__()
        norm_layer = lambda dim: nn.LayerNorm(dim, eps=EPS)  # noqa: E731  partial(nn.LayerNorm, eps=1e-6)
        # MAE encoder specifics
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)  # fixed sin-cos
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        # MAE decoder specifics
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)  # fixed sin-cos embedding
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)  # decoder to patch
        self.norm_pix_loss = norm_pix_loss

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W) -> (N, L, p*p*C) (the official: C = 3)."""
        p = self.patch_size
        assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
        c = imgs.shape[1]
        h = w = imgs.shape[2] // p
        x = imgs.reshape(shape=(imgs.shape[0], c, h, p, w, p))
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(shape=(imgs.shape[0], h * w, p**2 * c))

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by per-sample shuffling (argsort of ``noise``, the official
        ``torch.rand(N, L)``, here given)."""
        N, L, D = x.shape  # batch, length, dim
        len_keep = int(L * (1 - mask_ratio))
        assert noise.shape == (N, L)
        # sort noise for each sample
        ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        # keep the first subset
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        # generate the binary mask: 0 is keep, 1 is remove
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        # unshuffle to get the binary mask
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]  # add pos embed w/o cls token
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        cls_tokens = cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x, mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        # append mask tokens to sequence
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1)  # append cls token
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)
        return x[:, 1:, :]  # remove cls token

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.e-6)**.5
        loss = (pred - target) ** 2
        loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
        return (loss * mask).sum() / mask.sum()  # mean loss on removed patches

    def forward(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, pred, mask, ids_restore); the official returns the first three."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)  # [N, L, p*p*C]
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask, ids_restore


def add_weight_decay(model: nn.Module, weight_decay: float = 1e-5, skip_list: tuple = ()) -> list[dict]:
    """timm ``optim_factory.add_weight_decay`` (as ``main_pretrain.py`` calls it)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.}, {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(model: MaskedAutoencoderViT, args) -> torch.optim.AdamW:
    """``main_pretrain.py``: AdamW (betas 0.9, 0.95) on ``add_weight_decay``'s groups at ``args.lr``."""
    param_groups = add_weight_decay(model, args.weight_decay)
    return torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95))


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: float, args) -> float:
    """``util/lr_sched.py``: half-cycle cosine after a linear warm-up."""
    if epoch < args.warmup_epochs:
        lr = args.lr * epoch / args.warmup_epochs
    else:
        lr = args.min_lr + (args.lr - args.min_lr) * 0.5 * \
            (1. + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    for param_group in optimizer.param_groups:
        if "lr_scale" in param_group:
            param_group["lr"] = lr * param_group["lr_scale"]
        else:
            param_group["lr"] = lr
    return lr


def train_step(model: MaskedAutoencoderViT, optimizer: torch.optim.Optimizer, epoch: int, data_iter_step: int,
               iters_per_epoch: int, samples: torch.Tensor, noise: torch.Tensor, args
               ) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """One iteration of ``engine_pretrain.py`` ``train_one_epoch`` (``accum_iter`` 1); returns
    (loss, lr, mask, ids_restore)."""
    model.train()
    lr = adjust_learning_rate(optimizer, data_iter_step / iters_per_epoch + epoch, args)
    loss, _, mask, ids_restore = model(samples, mask_ratio=args.mask_ratio, noise=noise)
    loss_value = loss.item()
    loss.backward()  # loss_scaler(loss, optimizer, parameters=model.parameters(), update_grad=True)
    optimizer.step()
    optimizer.zero_grad()
    return loss_value, lr, mask, ids_restore
