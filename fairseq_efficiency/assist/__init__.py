"""AutoAssist instance shrinking (Zhang et al., 2019) and instance-selection baselines.

``--instance-selection autoassist`` trains the Boss on batches from which a
lightweight Assistant (online logistic regression over TF-IDF features of each
pair) has stochastically shrunk instances it predicts to have a low loss.
``self-paced`` and ``dynamic-sampling`` are baselines through the same
batching; ``uniform`` (default) is fairseq's own iterator.

Pieces, each usable without fairseq: :mod:`.features` (TF-IDF),
:mod:`.assistant` (the Assistant), :mod:`.selection` (policies),
:mod:`.worker` (asynchronous batch generation), :mod:`.iterator` (epochs);
:mod:`.hook` is the fairseq adapter.
"""
from fairseq_efficiency.assist.config import AutoAssistConfig  # noqa: F401
from fairseq_efficiency.assist import hook  # noqa: F401  (the hook of techniques.TECHNIQUES)
