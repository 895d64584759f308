"""What ``kl_retrievers.GaussianEncoder`` is without torch: a placeholder whose use names the extra to install.

As transformers' dummy objects do, the placeholder lets ``from kl_retrievers import *``, ``help(kl_retrievers)``
and ``inspect.getmembers(kl_retrievers)`` work on the core install, while using the torch encoder raises
``ModuleNotFoundError`` naming ``pip install "kl-retrievers[torch]"`` and the bundled models that run
without torch. Only ``kl_retrievers.__getattr__`` imports this module (it sits on top of
:mod:`kl_retrievers.pretrained`, whose list of torch-free models the message gives).

Examples:
    >>> TorchFreeGaussianEncoder.__name__
    'GaussianEncoder'
    >>> isinstance(object(), TorchFreeGaussianEncoder)
    False
"""

from __future__ import annotations

from typing import Any

from kl_retrievers._encoding import TORCH_EXTRA, missing_torch

__all__ = ["TorchFreeGaussianEncoder"]


class _NeedsTorch(type):
    """Metaclass of :class:`TorchFreeGaussianEncoder`: calling the class or reading a public attribute raises.

    Underscored names (``__wrapped__``, ``__signature__``...) are ``AttributeError`` as usual, so ``help()``,
    ``inspect`` and ``hasattr`` probes of private names work; ``isinstance`` is ``False`` for everything.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _needs_torch_error("GaussianEncoder(...)")

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(f"type object 'GaussianEncoder' has no attribute {name!r}")
        raise _needs_torch_error(f"GaussianEncoder.{name}")


class TorchFreeGaussianEncoder(metaclass=_NeedsTorch):
    """What ``kl_retrievers.GaussianEncoder`` is when torch is not installed: a placeholder that needs torch.

    The torch encoder needs torch and transformers (``pip install "kl-retrievers[torch]"``); without them
    ``kl_retrievers.GaussianEncoder`` resolves to this class (as transformers' dummy objects do), so
    ``from kl_retrievers import *``, ``help(kl_retrievers)`` and ``inspect.getmembers`` work, while creating
    one or calling ``from_pretrained``, ``from_backbone`` or any other public attribute raises
    ``ModuleNotFoundError`` naming the extra and the bundled models that run without torch
    (:func:`kl_retrievers.load_default_model`, ONNX Runtime). Nothing is an instance of it.
    """


TorchFreeGaussianEncoder.__name__ = TorchFreeGaussianEncoder.__qualname__ = "GaussianEncoder"


def _needs_torch_error(what: str) -> ModuleNotFoundError:
    """The error of :class:`TorchFreeGaussianEncoder`: what needs torch, the extra, and what runs without it."""
    from kl_retrievers.pretrained import _torch_free_models

    missing = missing_torch() or ["torch"]
    return ModuleNotFoundError(
        f"{what} needs {' and '.join(missing)}, which the core install of kl-retrievers leaves out; "
        f"{TORCH_EXTRA}. Without torch, kl_retrievers.load_model / load_default_model run these bundled models "
        f"on ONNX Runtime: {', '.join(_torch_free_models())}",
        name=missing[0],
    )
