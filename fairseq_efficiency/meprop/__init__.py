"""meProp (top-k sparsified back propagation) and meSimp (model simplification).

Sun et al., "Training Simplification and Model Simplification for Deep
Learning: A Minimal Effort Back Propagation Method" (sections 2.1-2.3, 3.3).

* :class:`TopKLinear` - ``nn.Linear`` with top-k backward (unified / per-example).
* :class:`MePropLSTMCell`, :class:`MePropLSTM` - LSTM with top-k gate gradients.
* :class:`MeSimp` - Algorithm 2: prune rarely-active units, physically.

fairseq edge: architectures ``lstm_meprop`` (:mod:`.lstm_meprop`) and
``transformer_meprop`` (:mod:`.transformer_meprop`), the meSimp hook (:mod:`.hook`).
"""
from fairseq_efficiency.meprop.topk import MODES, TopKLinear, TopKStats, check_k, check_mode, parse_k, resolve_k
from fairseq_efficiency.meprop.lstm import MePropLSTM, MePropLSTMCell
from fairseq_efficiency.meprop.mesimp import MeSimp, PruneGroup, linear_group, lstm_cell_group
from fairseq_efficiency.meprop import hook  # noqa: E402,F401  (the meSimp hook of techniques.TECHNIQUES)
from fairseq_efficiency.meprop import lstm_meprop  # noqa: E402,F401  (registration)
from fairseq_efficiency.meprop import transformer_meprop  # noqa: E402,F401  (registration)

__all__ = ["MODES", "TopKLinear", "TopKStats", "check_k", "check_mode", "parse_k", "resolve_k",
           "MePropLSTM", "MePropLSTMCell", "MeSimp", "PruneGroup", "linear_group", "lstm_cell_group"]
