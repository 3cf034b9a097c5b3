"""The demo models, re-exported from :mod:`dmcpfx.demo_models` (installed with dmcpfx).

Import them as ``from dmcpfx.demo_models import small_resnet`` (works from any directory); the
model spec ``examples.models:NAME`` is accepted as an alias of ``dmcpfx.demo_models:NAME``.
"""
from dmcpfx.demo_models import BasicBlock, CustomNet, SmallResNet, custom_net, small_resnet

__all__ = ["BasicBlock", "SmallResNet", "CustomNet", "small_resnet", "custom_net"]
