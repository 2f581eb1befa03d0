"""Lets `import torchvision` succeed beside the CPU build of torch (installed into .venv-serve
by launch/serve.sh, imported at interpreter start through a .pth file).

The registry's Linux torchvision wheels are CUDA builds: their C++ ops library needs
libtorch_cuda and does not load beside torch 2.13.0+cpu. torchvision then still registers
fake (meta) kernels for two of those ops (`torchvision::nms`, `qnms`) at import, which fails
because the ops were never defined. vLLM's Qwen3.5 module imports a transformers image processor
that needs torchvision's pure-Python transforms only; a text model never calls the ops. So: when
torchvision is first imported, registering a fake kernel for a torchvision op that does not
exist is skipped. Nothing else changes, and on a machine where the ops load nothing is skipped.
"""

import importlib.abc
import sys


def _tolerant(register_fake):
    def wrapper(op, fn=None, /, *args, **kwargs):
        if not (isinstance(op, str) and op.startswith("torchvision::")):
            return register_fake(op, fn, *args, **kwargs)

        def register(f):
            try:
                return register_fake(op, *args, **kwargs)(f)
            except (RuntimeError, ValueError):  # the op was never defined: its library did not load
                return f
        return register if fn is None else register(fn)
    return wrapper


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch.library
        torch.library.register_fake = _tolerant(torch.library.register_fake)
        return None  # the normal finders import torchvision itself


sys.meta_path.insert(0, _Finder())
