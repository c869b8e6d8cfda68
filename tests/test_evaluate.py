"""The plugin's one BLEU: sacrebleu corpus BLEU of already-tokenized text."""
import pytest

from fairseq_efficiency.evaluate import corpus_bleu


def test_corpus_bleu_scores_tokenized_text_as_is():
    refs = ["the cat sat on the mat .", "a dog ran in the big park ."]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_bleu(["x y z w", "q r s t"], refs) == 0.0
    # tokenize="none": "mat." is one token, so a hypothesis glued to its period loses n-grams
    assert corpus_bleu(["the cat sat on the mat.", refs[1]], refs) < 100.0
    partial = corpus_bleu(["the cat sat on a mat .", refs[1]], refs)
    assert 0.0 < partial < 100.0
