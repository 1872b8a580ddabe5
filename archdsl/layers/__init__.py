"""Tensor helpers shared by the components: the two feature layouts (``layout``: tokens ``(B, H*W, C)``
and maps ``(B, C, H, W)``) and windows (``windows``: geometry and the window-divides-grid rule, Swin's
relative position bias, the shifted-window mask, partition and merge)."""
