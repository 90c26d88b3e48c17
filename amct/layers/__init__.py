"""Built-in layer types: shape inference, learned-blob shapes and numpy kernels.

One module per layer family; importing this package registers them all.
"""
import importlib
import pkgutil

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_m}")
