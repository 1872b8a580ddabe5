"""GrafT on a pretrained timm Swin-T: load the backbone, see what the new grafts do, fine-tune.

1. Build ``specs/swin_t_graft.yaml`` and copy a timm ``swin_tiny_patch4_window7_224`` state dict
   into its backbone with ``archdsl.load_timm_weights(model, timm_model, new=("graft",))``: every
   backbone entry pairs with timm's, and the keys left over are the grafts' (printed).
2. How the graft is initialised and what it does at step 0 (``archdsl/components/options/graft.py``): LayerNorms at
   ones and zeros, linears with PyTorch's default Kaiming-uniform, the anti-aliasing embedding and
   the relative position bias tables from a normal of std 0.02. So a new graft adds a term at once
   and the grafted model no longer computes the pretrained function. Measured here (random
   weights standing in for the pretrained ones, 8 digits images): the logits move by up to 1.25,
   against a spread (std) of 0.33 across timm's logits. With ``graft(zero_init=true)`` the finest
   scale's channel-mixing linear starts at zero and the grafts add exactly nothing at step 0: the
   grafted model's logits differ from timm's by 4e-7, the rounding difference between archdsl's
   Swin-T and timm's; training then moves away from the pretrained model gradually. That is the
   setting to fine-tune a pretrained backbone with.
3. AdamW steps on one batch of scikit-learn's digits (8x8 images upscaled to 224x224, 10 classes,
   a new classifier), printing the loss as the grafts and the backbone train together.
4. The same loading for DeiT-T + GrafT (``specs/deit_t_graft.yaml``) from timm's
   ``deit_tiny_patch16_224``: its backbone uses window attention without a class token, so the
   relative position bias tables and the 196-token position embedding are new as well, and timm's
   class token and 197-token position embedding are not used.

No weights can be downloaded here, so the timm models are freshly initialised; with network access
``timm.create_model(..., pretrained=True)`` gives ImageNet weights and nothing else changes.
Run: ``.venv/bin/python examples/graft_pretrained_swin.py`` (about a minute on 2 cores).
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import archdsl

SPECS = Path(__file__).resolve().parents[1] / "specs"


def grafted(spec: str, zero_init: bool = False) -> archdsl.ArchModel:
    text = (SPECS / spec).read_text()
    if zero_init:
        text = text.replace("graft(", "graft(zero_init=true, ")
    return archdsl.build_model(archdsl.read_text(text, file=str(SPECS / spec)))


def digits(n: int, size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - 0.5) / 0.25, torch.tensor(data.target[:n])


def main() -> None:
    torch.manual_seed(0)
    backbone = timm.create_model("swin_tiny_patch4_window7_224").eval()  # stands in for pretrained weights
    x, y = digits(8)
    with torch.no_grad():
        reference = backbone(x)
    for zero_init in (False, True):
        model = grafted("swin_t_graft.yaml", zero_init).eval()
        pairs = archdsl.load_timm_weights(model, backbone, new=("graft",))
        paired = {ours for ours, _ in pairs}
        new = [k for k in model.state_dict() if k not in paired]
        with torch.no_grad():
            change = (model(x) - reference).abs().max().item()
        print(f"zero_init={zero_init}: {len(pairs)} entries from timm, {len(new)} new "
              f"({sum(model.state_dict()[k].numel() for k in new):,} values), e.g. {new[0]}; step 0: "
              f"max |logits - timm's| = {change:.4g} (timm's logits: std {reference.std().item():.3g})")

    model.reset_classifier(10)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = digits(16)
    for step in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"fine-tuning step {step + 1}: loss {loss.item():.3f}")

    deit = grafted("deit_t_graft.yaml")
    pairs = archdsl.load_timm_weights(deit, timm.create_model("deit_tiny_patch16_224"),
                                      new=("graft", "relative_position", "pos_embed"), unused=("cls_token", "pos_embed"))
    print(f"DeiT-T + GrafT: {len(pairs)} entries from timm's deit_tiny_patch16_224, "
          f"{len(deit.state_dict()) - len(pairs)} new")


if __name__ == "__main__":
    main()
