"""Stages 2-3 of the pipeline: the search space and the DMCP search (DESIGN.md sections 3-5).

``instrument`` (the gated search space), ``gates`` (the Markov gate), ``budget``
(expected and exact MACs per image), ``loop`` (:func:`search`) with ``step`` (one
iteration), ``state`` (checkpoint and resume), ``result``, ``schedule``, ``bn`` (BatchNorm
isolation), ``slimmable`` (sliced sub-nets), ``evaluation``, ``holdout`` and ``derive``.
The public functions are re-exported by :mod:`dmcpfx`; this package imports nothing itself.
"""
