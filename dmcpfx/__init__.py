"""dmcpfx: Differentiable Markov Channel Pruning for any traceable PyTorch model.

Pipeline (DESIGN.md section 1): ``analyze`` -> ``instrument`` -> ``search`` ->
``derive`` -> ``materialize`` (+ ``export_onnx``) -> ``retrain``.
"""
from .analysis import analyze
from .product.arch import Arch, load_arch, save_arch, validate_widths
from .counting import count_flops, count_params
from .errors import AnalysisError, ArchError, ConfigError, DmcpfxError, NonFiniteError, TraceError
from .search.gates import MarkovGate, split_channels
from .analysis.graph import ChannelGraph, Group
from .search.instrument import GroupInfo, SearchSpace, instrument
from .materialize import MaterializeError, materialize
from .product.onnx_export import OnnxExportError, export_onnx
from .search.budget import budget_loss, expected_flops, parse_target
from .search.derive import derive
from .product.plots import plot_widths
from .product.run_dir import load
from .product.retrain import retrain
from .search.loop import search

__all__ = [
    "analyze", "instrument", "materialize", "export_onnx", "count_flops", "count_params",
    "load_arch", "save_arch", "validate_widths", "Arch", "ChannelGraph", "Group", "GroupInfo",
    "SearchSpace", "MarkovGate", "split_channels", "search", "derive", "retrain", "plot_widths",
    "expected_flops", "budget_loss", "parse_target", "load",
    "DmcpfxError", "TraceError", "AnalysisError", "ArchError", "ConfigError", "NonFiniteError", "MaterializeError", "OnnxExportError",
]
__version__ = "0.1.0"
