"""Stage 5 of the pipeline: what a run ships (DESIGN.md sections 6-7 and 1).

``retrain`` with ``retrain_state``, ``onnx_export`` (checked with onnxruntime), ``run_dir``
(loading a run's compact model), ``report`` and ``mmrazor`` (importing MMRazor architectures).
The arch YAML, plots and accuracy are shared contracts (:mod:`dmcpfx.arch`,
:mod:`dmcpfx.plots`, :mod:`dmcpfx.accuracy`). The verbs are re-exported by :mod:`dmcpfx`;
this package imports nothing itself.
"""
