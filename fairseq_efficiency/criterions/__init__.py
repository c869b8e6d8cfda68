"""Criteria registered by the plugin."""
from fairseq_efficiency.criterions.sentence_cross_entropy import (  # noqa: F401
    SENTENCE_LOSS,
    SentenceCrossEntropyCriterion,
    sentence_nll,
)
