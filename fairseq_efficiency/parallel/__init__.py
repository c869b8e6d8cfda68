"""Hybrid data/model-parallel LSTM encoder-decoder (HybridNMT, Ono et al., section 3).

Plain PyTorch core (usable without fairseq):

* :mod:`.seq2seq` - the model: stacked LSTMs without input feeding, decoder
  layer ``l`` initialised from encoder layer ``l``, batched Luong attention
  head (eq. 1-6); ``input_feeding=True`` gives HybridNMT-IF.
* :mod:`.pipeline` - :class:`WavefrontPipeline` (one process per device over
  ``torch.distributed``) and :class:`DevicePipeline` (one process, several devices).
* :mod:`.spawn` - helpers to run a function on N local gloo ranks (ports and
  parent-death signals in :mod:`.procs`, shared with ``fairseq-efficiency-launch``).

fairseq edge: model ``hybrid_lstm`` (:mod:`.hybrid_lstm`), criterion
``hybrid_cross_entropy`` (:mod:`.hybrid_cross_entropy`) and the batch-sharding
hook (:mod:`.hook`).
"""

from fairseq_efficiency.parallel import hook  # noqa: E402,F401  (the hook of techniques.TECHNIQUES)
from fairseq_efficiency.parallel import hybrid_lstm  # noqa: E402,F401  (registration)
from fairseq_efficiency.parallel import hybrid_cross_entropy  # noqa: E402,F401  (registration)
