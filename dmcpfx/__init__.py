"""dmcpfx: Differentiable Markov Channel Pruning for any traceable PyTorch model.

Pipeline (DESIGN.md section 1): ``analyze`` -> ``instrument`` -> ``search`` ->
``derive`` -> ``materialize`` (+ ``export_onnx``) -> ``retrain``; ``load`` rebuilds a
run's compact model. This namespace holds those verbs, the types they return and the
errors. Helpers live in their modules (``dmcpfx.counting.count_flops``,
``dmcpfx.arch.load_arch``, ``dmcpfx.search.budget.expected_flops``, ...); the README's
layout table says which module holds what.
"""
from .analysis import analyze
from .analysis.channel_graph import ChannelGraph
from .arch import Arch
from .errors import AnalysisError, ArchError, ConfigError, DmcpfxError, NonFiniteError, TraceError
from .materialize import MaterializeError, materialize
from .product.latency import latency_table
from .product.onnx_export import OnnxExportError, export_onnx
from .product.retrain import RetrainResult, retrain
from .product.retrain_options import RetrainOptions
from .product.run_dir import load
from .search.derive import derive
from .search.instrument import instrument
from .search.latency_table import LatencyTable
from .search.loop import search
from .search.options import DeriveOptions, SearchOptions
from .search.result import SearchResult
from .search.space import SearchSpace

__all__ = [
    # the verbs
    "analyze", "instrument", "search", "derive", "materialize", "export_onnx", "retrain", "load",
    "latency_table",
    # what they return or take
    "ChannelGraph", "SearchSpace", "SearchResult", "Arch", "RetrainResult", "LatencyTable",
    # the options of each stage (also the config sections search:, derive:, retrain:)
    "SearchOptions", "DeriveOptions", "RetrainOptions",
    # errors
    "DmcpfxError", "TraceError", "AnalysisError", "ArchError", "ConfigError", "NonFiniteError",
    "MaterializeError", "OnnxExportError",
]
from .version import __version__  # noqa: E402
