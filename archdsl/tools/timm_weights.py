"""Copying a timm model's weights into an archdsl model of the same architecture.

The compiler registers parameters and persistent buffers in the order timm's model files do
(stem, then per stage the downsample and each block's norm, mixer, norm, MLP, then the final
norm and the classifier), so two models of one architecture have state dicts that pair up entry
by entry. This is structural, not per model: any member of a family the compiler reproduces
(other widths, depths, heads) pairs up the same way. A pairing whose shapes disagree is refused.

Add-ons: ``new`` names parts of this model that the timm model does not have (``("graft",)`` for
GrafT branches on a timm backbone); their entries are left as initialised. ``unused`` names parts
of the timm model with no counterpart here (``("cls_token", "pos_embed")`` for a DeiT backbone
turned to window attention); they are not copied. Both match substrings of state-dict keys.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


def load_timm_weights(model: nn.Module, timm_model: nn.Module, new: Sequence[str] = (),
                      unused: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Copy ``timm_model``'s state into ``model``; returns the ``(archdsl key, timm key)`` pairs (the
    keys of ``model`` in no pair are its ``new`` parts)."""
    ours = {k: v for k, v in model.state_dict().items() if not any(part in k for part in new)}
    theirs = {k: v for k, v in timm_model.state_dict().items() if not any(part in k for part in unused)}
    if len(ours) != len(theirs):
        raise ValueError(f"the models differ: {len(ours)} state entries here, {len(theirs)} in the timm model; "
                         f"the spec does not describe the same architecture (parts only one of them has go in "
                         f"new= or unused=)")
    pairs, new_state = [], {}
    for (key, value), (tkey, tvalue) in zip(ours.items(), theirs.items()):
        if value.shape != tvalue.shape:
            raise ValueError(f"{key} {tuple(value.shape)} does not match timm's {tkey} {tuple(tvalue.shape)}; "
                             f"the spec does not describe the same architecture")
        new_state[key] = tvalue.detach().clone().to(value.dtype)
        pairs.append((key, tkey))
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(new_state, strict=False)
    assert not unexpected and all(any(part in k for part in new) for k in missing)
    return pairs
