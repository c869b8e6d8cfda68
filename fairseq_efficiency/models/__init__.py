"""Model architectures registered by the plugin."""

from fairseq_efficiency.models import hybrid_lstm  # noqa: E402,F401  (registration)
from fairseq_efficiency.models import lstm_meprop  # noqa: E402,F401  (registration)
from fairseq_efficiency.models import transformer_meprop  # noqa: E402,F401  (registration)
