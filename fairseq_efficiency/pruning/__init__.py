"""Magnitude pruning of NMT models (See, Luong & Manning 2016).

* :mod:`.classes` — weight classes (paper Fig. 2) found from parameter names/module types;
* :mod:`.schemes` — class-blind / class-uniform / class-distribution (sec. 3.3) and LAMP
  (Lee et al. 2021) as ``torch.nn.utils.prune``-style scheme objects, with a per-class cap;
* :mod:`.schedule` — one-shot or gradual pruning events; :mod:`.report` — per-class tables;
* :mod:`.retrain` — the retraining learning-rate recipe (sec. 3.4); :mod:`.retrain_cmd` — the
  ``fairseq-train`` command that retrains a pruned checkpoint with its original options;
* :mod:`.masks` — masks enforced on weights, gradients and optimizer state (sec. 3.4);
* :mod:`.hook` — ``--prune-*`` flags of the ``translation_efficiency`` task;
* :mod:`.offline` — pruning a trained checkpoint; :mod:`.checkpoint` — reading, building and
  writing checkpoints; :mod:`.export` — compact checkpoints; :mod:`.analysis` — Figs. 4 and 8;
* :mod:`.cli` — ``fairseq-efficiency-prune`` (offline pruning, ``--analyze``, ``--retrain``)
  and ``fairseq-efficiency-sparse-export``.
"""
from fairseq_efficiency.pruning import export as _export  # noqa: F401  (allow-lists densify)
from fairseq_efficiency.pruning.hook import PruningConfig, PruningHook  # noqa: F401
from fairseq_efficiency.pruning.masks import MaskSet  # noqa: F401
from fairseq_efficiency.pruning.schemes import SCHEMES, compute_masks  # noqa: F401
