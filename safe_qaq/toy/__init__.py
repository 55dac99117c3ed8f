"""The toy reproduction, apart from the recipe: a CPU check of the training machinery, not a fraud detector.

* :mod:`~safe_qaq.toy.tiny_model` -- the tiny random Qwen2-Audio (0.16 M parameters) ms-swift loads like the real one;
* :mod:`~safe_qaq.toy.data` -- synthetic calls from a committed phrase bank, with an audible label cue;
* :mod:`~safe_qaq.toy.warm_start` -- the warm base (shipped in ``data/warm_base``; ``make model`` rebuilds it);
* :mod:`~safe_qaq.toy.loss_scale` (+ ``loss_scale_plugin``) -- the warm start's loss weighting;
* :mod:`~safe_qaq.toy.measure` -- each stage's model measured on held-out calls, and the claims
  (``python -m safe_qaq.toy measure|report``).

docs/toy.md describes the toy, its table and its claims.
"""
