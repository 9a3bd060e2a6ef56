"""Export a pre-trained encoder (optionally its projector) as a PyTorch state_dict plus a JSON sidecar.

    python -m ssl4eo_jax.export --checkpoint runs/barlow_demo --to model.safetensors \
        [--format timm|torchvision] [--with-projector]

``--checkpoint`` is a run's work directory, its ``checkpoints/`` directory or one step directory
(the latest step is used). The weights file (``.safetensors``, or ``.pth``/``.pt`` with torch) has
torchvision/timm names, which coincide for ResNet-18/34/50, so both formats hold the same tensors:
no ``fc`` (timm: ``num_classes=0``; torchvision: set ``model.fc = torch.nn.Identity()`` and a
conv1 for the band count first). A ViT run (``config.model.name`` ``vit_*``) exports timm's
``VisionTransformer`` names without ``head`` (``--format timm`` only: torchvision's ViT names its
weights differently). ``--format`` picks the loading recipe written into the sidecar
(``model.json`` beside ``model.safetensors``), which also records the bands, the input
normalisation, the method, the model and the source checkpoint. With ``--with-projector`` the
projector is added under ``projector.`` as a ``torch.nn.Sequential`` state_dict.
"""

from __future__ import annotations

import os
from typing import Any

from ssl4eo_jax.errors import OneLineArgumentParser, UserError, run_guarded
from ssl4eo_jax.interop.loading import SIDECAR_MARK, sidecar_path
from ssl4eo_jax.interop.normalisation import Normalisation
from ssl4eo_jax.interop.projector import projector_to_state_dict, torch_code
from ssl4eo_jax.interop.resnet_weights import encoder_to_state_dict
from ssl4eo_jax.interop.runs import RunCheckpoint, restore_run, run_manifest
from ssl4eo_jax.interop.state_dict import InteropError, write_file
from ssl4eo_jax.interop.vit_weights import TIMM_NAMES, vit_encoder_to_state_dict
from ssl4eo_jax.methods.base import evaluated_network
from ssl4eo_jax.models.resnet import feature_dim
from ssl4eo_jax.models.vit import VIT_SIZES, is_vit
from ssl4eo_jax.report import write_json

FORMATS = ("timm", "torchvision")
PROJECTOR_PREFIX = "projector."


def model_info(cfg: dict[str, Any], num_bands: int) -> dict[str, Any]:
    """The sidecar's ``model``: what builds the network in timm/torchvision, and its feature dim."""
    name = cfg["name"]
    if is_vit(name):
        dim, depth, heads, patch = VIT_SIZES[name]
        return {"name": name, "timm_name": TIMM_NAMES[name], "in_chans": num_bands, "feature_dim": dim,
                "patch_size": int(cfg.get("patch_size") or patch), "img_size": int(cfg.get("img_size", 224)),
                "depth": int(cfg.get("depth") or depth), "heads": heads, "pool": cfg.get("pool", "token")}
    width = int(cfg.get("width", 64))
    return {"name": name, "stem": cfg.get("stem", "imagenet"), "width": width, "in_chans": num_bands,
            "feature_dim": feature_dim(name, width)}


def _create_model(fmt: str, model: dict[str, Any]) -> list[str]:
    """Lines that build the network (without its classifier) for the exported weights."""
    name, bands = model["name"], model["in_chans"]
    if is_vit(name):  # timm's global_pool="avg" with fc_norm=False: norm, then the mean of the patch tokens
        pool = "global_pool='token'" if model["pool"] == "token" else "global_pool='avg', fc_norm=False"
        return ["import timm", f"model = timm.create_model({model['timm_name']!r}, in_chans={bands}, num_classes=0, "
                f"img_size={model['img_size']}, patch_size={model['patch_size']}, depth={model['depth']}, {pool})"]
    width = model["width"]
    if fmt == "timm":
        lines = ["import timm", f"model = timm.create_model({name!r}, in_chans={bands}, num_classes=0)"]
    else:
        lines = ["import torchvision", f"model = torchvision.models.{name}()", "model.fc = torch.nn.Identity()"]
    if model["stem"] == "small":
        lines.append(f"model.conv1 = torch.nn.Conv2d({bands}, {width}, kernel_size=3, stride=1, padding=1, bias=False)")
    elif fmt == "torchvision":
        lines.append(f"model.conv1 = torch.nn.Conv2d({bands}, {width}, kernel_size=7, stride=2, padding=3, bias=False)")
    return lines


def load_recipe(fmt: str, model: dict[str, Any], weights: str, projector: str | None) -> list[str]:
    """Python lines that load the exported file into a timm or torchvision model with strict=True."""
    safetensors = weights.endswith(".safetensors")
    lines = ["import torch"] + (["import safetensors.torch"] if safetensors else []) + _create_model(fmt, model)
    lines.append(f"state = safetensors.torch.load_file({weights!r})" if safetensors else
                 f"state = torch.load({weights!r}, weights_only=True)")
    if projector:
        n, p = len(PROJECTOR_PREFIX), repr(PROJECTOR_PREFIX)
        lines += [f"projector = {projector}",
                  f"projector.load_state_dict({{k[{n}:]: v for k, v in state.items() if k.startswith({p})}}, strict=True)",
                  f"state = {{k: v for k, v in state.items() if not k.startswith({p})}}"]
    lines += ["model.load_state_dict(state, strict=True)",
              "model.eval()  # model(x): pooled features of x = (bands - mean) / std, NCHW float32"]
    return lines


def _normalisation(run: RunCheckpoint) -> tuple[Normalisation, list[str] | None, str | None]:
    """The pre-training input normalisation, the bands and the dataset's name, from the run's manifest."""
    manifest = run_manifest(run)
    if manifest is None:
        return (Normalisation("dataset", None, None, "the run's dataset manifest was not found: use the "
                              "evaluation dataset's band statistics"), None, run.config.get("data", {}).get("name"))
    split = manifest.raw.get("band_stats", {}).get("split", "train")
    source = f"band_stats ({split} split) of dataset {manifest.dataset!r} at {manifest.root}, used in pre-training"
    return Normalisation("pretrain_stats", manifest.mean, manifest.std, source), list(manifest.bands), manifest.dataset


def export_checkpoint(checkpoint: str, to: str, fmt: str = "timm", with_projector: bool = False) -> dict[str, Any]:
    """Writes the weights file ``to`` and its sidecar; returns the sidecar's contents."""
    if fmt not in FORMATS:
        raise UserError(f"Unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    run = restore_run(checkpoint)
    encoder = run.encoder()
    cfg = run.config["model"]
    vit = is_vit(cfg["name"])
    if vit and fmt != "timm":
        raise InteropError(f"--format {fmt}: the run at {run.step_dir} is a ViT ({cfg['name']}), whose weights "
                           "torchvision's VisionTransformer names differently; export it with --format timm.")
    model = model_info(cfg, run.num_bands)
    state_dict = vit_encoder_to_state_dict(encoder) if vit else encoder_to_state_dict(encoder)
    projector = None
    if with_projector:
        if "projector" not in run.state["params"]:
            raise InteropError(f"The {run.config.get('method')!r} run at {run.step_dir} has no projector.")
        variables = {"params": run.state["params"]["projector"],
                     "batch_stats": run.state.get("batch_stats", {}).get("projector", {})}
        state_dict.update(projector_to_state_dict(variables, PROJECTOR_PREFIX))
        projector = {"prefix": PROJECTOR_PREFIX, "torch": torch_code(variables)}
    write_file(to, state_dict, metadata={"method": str(run.config.get("method")), "model": model["name"]})
    normalisation, bands, dataset = _normalisation(run)
    sidecar = {
        SIDECAR_MARK: 1, "format": fmt, "weights": os.path.basename(to), "model": model,
        "method": run.config.get("method"), "network": evaluated_network(str(run.config.get("method", ""))),
        "dataset": dataset, "bands": bands,
        "normalisation": normalisation.to_dict(), "projector": projector,
        "source": {"checkpoint": run.step_dir, "step": run.step, "workdir": run.workdir},
        "load": load_recipe(fmt, model, os.path.basename(to), projector and projector["torch"]),
    }
    if vit:
        sidecar["note"] = (f"ViT inputs: {model['img_size']}x{model['img_size']} pixels (for other sizes pass "
                           "dynamic_img_size=True to timm.create_model: it resamples pos_embed bicubically).")
    elif model["width"] != 64:
        sidecar["note"] = f"width {model['width']}: timm and torchvision only build width 64 ResNets."
    write_json(sidecar_path(to), sidecar)
    return sidecar


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="python -m ssl4eo_jax.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a run's workdir, its checkpoints/ dir or a step dir")
    parser.add_argument("--to", required=True, help="output weights file: .safetensors, .pth or .pt")
    parser.add_argument("--format", default="timm", choices=FORMATS, help="the loading recipe in the sidecar")
    parser.add_argument("--with-projector", action="store_true", help="also write the projector (projector.*)")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    sidecar = export_checkpoint(args.checkpoint, args.to, args.format, args.with_projector)
    model = sidecar["model"]
    print(f"Wrote {model['name']} ({model['in_chans']} bands, {sidecar['method']}, step {sidecar['source']['step']})"
          f"{' with its projector' if sidecar['projector'] else ''} to {args.to}, and {sidecar_path(args.to)}.\n"
          "Load it with:\n    " + "\n    ".join(sidecar["load"]))


if __name__ == "__main__":
    run_guarded(main)
