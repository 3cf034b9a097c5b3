"""Stages 2-3 of the pipeline: the search space and the DMCP search (DESIGN.md sections 3-5).

``instrument`` with ``space`` (the gated :class:`~dmcpfx.search.space.SearchSpace`), ``gates``
(the Markov gate), ``budget`` (expected and exact MACs per image), ``loop``
(:func:`~dmcpfx.search.loop.search`) with ``step`` (one iteration), ``state`` (checkpoint and
resume), ``result``, ``schedule``, ``bn`` (BatchNorm isolation), ``slimmable`` (sliced sub-nets),
``evaluation``, ``holdout`` and ``derive``. This layer imports the analysis, the passes and the
shared modules only. The verbs are re-exported by :mod:`dmcpfx`; this package imports nothing itself.
"""
