"""The PyTorch reference's Barlow Twins step for the same model and batch, for the speed ratio.

As ``src/bigearthnet_B12_barlowtwins_train.py`` of the SSL4EO review: a torchvision ResNet-18 with
a ``bands``-channel conv1, projector 2048-2048-2048 (Linear without bias, BatchNorm1d, ReLU), the
cross-correlation of the BatchNorm1d(affine=False)-standardised embeddings, lambda 0.0051, both
views through the network one after the other, and an SGD-momentum update (the reference's LARS
adds only elementwise work). On a GPU it runs channels-last with bf16 autocast when ``dtype`` is
bfloat16 (the reference used fp16 AMP). Views are given, as after the reference's data loader.
"""

from __future__ import annotations

import time

REFERENCE_MODEL = "resnet18"


def reference_skip(model: str) -> str | None:
    """Why the reference step does not compare with a step on ``model`` (None: it does)."""
    if model == REFERENCE_MODEL:
        return None
    return f"it is a {REFERENCE_MODEL} Barlow Twins step; this one runs {model}"



def torch_barlow_images_per_sec(batch: int, crop: int, bands: int = 13, iters: int = 5,
                                dtype: str = "float32") -> tuple[float, str]:
    """(images/s, device name) of the reference training step."""
    import torch
    from torch import nn

    from ssl4eo_jax.bench.torch_resnet import ResNet

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = ResNet("resnet18", bands, num_classes=1)
    backbone.fc = nn.Identity()
    projector = nn.Sequential(
        nn.Linear(512, 2048, bias=False), nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
        nn.Linear(2048, 2048, bias=False), nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
        nn.Linear(2048, 2048, bias=False),
    )
    standardise = nn.BatchNorm1d(2048, affine=False)
    model = nn.ModuleDict({"backbone": backbone, "projector": projector, "bn": standardise}).to(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    x1 = torch.randn(batch, bands, crop, crop, device=device).to(memory_format=memory_format)
    x2 = torch.randn(batch, bands, crop, crop, device=device).to(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> None:
        with autocast:
            z1 = model["projector"](model["backbone"](x1))
            z2 = model["projector"](model["backbone"](x2))
            c = model["bn"](z1.float()).T @ model["bn"](z2.float()) / batch
            on_diag = (torch.diagonal(c) - 1).pow(2).sum()
            off_diag = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
            loss = on_diag + 0.0051 * off_diag
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return iters * batch / (time.perf_counter() - start), name
