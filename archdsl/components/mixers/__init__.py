"""Token mixers: one file per family. Each mixer maps tokens ``(B, N, C)`` on a static grid to
tokens of the same shape. Importing this package imports every module in it, and each registers
its mixers in ``archdsl.components.MIXERS``: a new family is a new file here, nothing else. The
contract every mixer implements, and when each method is called, is ``archdsl.components.Mixer``.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
