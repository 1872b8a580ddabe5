"""Tools around the model, apart from it: ONNX and ``torch.export`` (``export``), compiled CPU inference
(``optimize``), the fvcore trace (``trace``), graph drawings (``drawing``), the JSON Schema for editors
(``schema``), timm glue (``timm_registry``: specs as timm models; ``timm_weights``: loading timm
checkpoints) and helpers for parity tests (``testing``)."""
