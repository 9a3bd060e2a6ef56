"""ResNet-18/34/50 in Flax linen, for any number of input bands.

The layout follows torchvision's ``resnet`` exactly (same layers, paddings, BatchNorm momentum and
epsilon, He fan-out initialisation), so torchvision/timm/torchgeo weights map one to one and our
encoders can be exported back. The stem is configurable because the reference code uses the
ImageNet stem (7x7/2 conv + 3x3/2 max-pool) for 120-128 px BigEarthNet patches and a 3x3/1 conv
for 32 px So2Sat patches.

Inputs are NHWC float arrays already normalised per band. ``__call__`` returns the pooled
features (N, 512) for ResNet-18/34 and (N, 2048) for ResNet-50.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.models.batchnorm import BatchNorm
from ssl4eo_jax.models.conv import conv_general_dilated

# torchvision: nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torchvision BatchNorm2d(momentum=0.1) keeps 0.9 of the old running statistics.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

STAGE_SIZES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}


def _norm(train: bool, dtype: Any, name: str, zero_init: bool = False) -> BatchNorm:
    """A torchvision-equivalent BatchNorm; statistics over the global batch under jit."""
    return BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
        name=name,
    )


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision BasicBlock: two 3x3 convs, identity or 1x1 projection shortcut."""

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out_features = self.features * self.expansion
        residual = x
        y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
        y = nn.relu(_norm(train, self.dtype, "bn1")(y))
        y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
        y = _norm(train, self.dtype, "bn2", self.zero_init_residual)(y)
        if self.stride != 1 or x.shape[-1] != out_features:
            residual = _conv(out_features, 1, self.stride, self.dtype, "downsample_conv")(x)
            residual = _norm(train, self.dtype, "downsample_bn")(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5: the stride sits on the 3x3 conv)."""

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out_features = self.features * self.expansion
        residual = x
        y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
        y = nn.relu(_norm(train, self.dtype, "bn1")(y))
        y = _conv(self.features, 3, self.stride, self.dtype, "conv2")(y)
        y = nn.relu(_norm(train, self.dtype, "bn2")(y))
        y = _conv(out_features, 1, 1, self.dtype, "conv3")(y)
        y = _norm(train, self.dtype, "bn3", self.zero_init_residual)(y)
        if self.stride != 1 or x.shape[-1] != out_features:
            residual = _conv(out_features, 1, self.stride, self.dtype, "downsample_conv")(x)
            residual = _norm(train, self.dtype, "downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """A torchvision-layout ResNet encoder that returns globally pooled features.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      bottleneck: Bottleneck blocks (ResNet-50) instead of BasicBlocks.
      stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "small" (3x3/1 conv + the same max-pool,
        as the So2Sat reference code, which keeps the max-pool).
      width: channels of the first stage (64 in torchvision).
      dtype: computation dtype (bfloat16 for mixed precision); parameters stay float32.
    """

    stage_sizes: Sequence[int]
    bottleneck: bool = False
    stem: str = "imagenet"
    width: int = 64
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = _conv(self.width, 7, 2, self.dtype, "conv1")(x)
        elif self.stem == "small":
            x = _conv(self.width, 3, 1, self.dtype, "conv1")(x)
        else:
            raise ConfigError(f"Unknown ResNet stem {self.stem!r} (config.model.stem); use 'imagenet' or 'small'.")
        x = nn.relu(_norm(train, self.dtype, "bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block_cls = Bottleneck if self.bottleneck else BasicBlock
        for stage, n_blocks in enumerate(self.stage_sizes):
            for block in range(n_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = block_cls(
                    self.width * 2**stage,
                    stride=stride,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{block}",
                )(x, train)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def resnet(name: str, **kwargs: Any) -> ResNet:
    """Builds a ResNet by torchvision name ("resnet18", "resnet34", "resnet50")."""
    if name not in STAGE_SIZES:
        raise ConfigError(f"Unknown model {name!r} (config.model.name); choose one of {sorted(STAGE_SIZES)}.")
    return ResNet(stage_sizes=STAGE_SIZES[name], bottleneck=name == "resnet50", **kwargs)


def feature_dim(name: str, width: int = 64) -> int:
    """Dimension of the pooled features of ``resnet(name, width=width)``."""
    return width * 8 * (4 if name == "resnet50" else 1)
