"""Stages 4-5 of the pipeline: what a run ships (DESIGN.md sections 6-7 and 1).

``arch`` (the arch YAML), ``retrain`` with ``retrain_state`` and ``accuracy``,
``onnx_export`` (checked with onnxruntime), ``run_dir`` (loading a run's compact model),
``report`` and ``plots``, and ``mmrazor`` (importing MMRazor architectures). The public
functions are re-exported by :mod:`dmcpfx`; this package imports nothing itself.
"""
