"""Model architectures registered by the plugin."""
from fairseq_efficiency.models import hybrid_lstm  # noqa: F401
