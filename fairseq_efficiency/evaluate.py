"""Evaluation of translation models: perplexity, and the one BLEU of the plugin.

BLEU is sacrebleu's corpus BLEU on the already-tokenized text (``tokenize="none"``),
whether the translations come from beam search in process (:func:`bleu`: pruning's
``--analyze`` and benchmark) or from ``fairseq-generate`` (the demo).
"""
import math

import torch

from fairseq import utils


def _batches(task, model, split, max_tokens=None, max_sentences=None):
    if split not in task.datasets:
        task.load_dataset(split)
    return task.get_batch_iterator(
        dataset=task.dataset(split), max_tokens=max_tokens, max_sentences=max_sentences,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True, required_batch_size_multiple=1, seed=1, num_workers=0,
    ).next_epoch_itr(shuffle=False)


@torch.no_grad()
def perplexity(task, model, split="valid", max_tokens=4000) -> float:
    """Per-token perplexity (no label smoothing) of ``model`` on ``split``."""
    model.eval()
    pad = task.target_dictionary.pad()
    nll, ntok = 0.0, 0
    for sample in _batches(task, model, split, max_tokens=max_tokens):
        out = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(out, log_probs=True)
        target = sample["target"]
        keep = target.ne(pad)
        nll -= float(lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[keep].sum())
        ntok += int(keep.sum())
    return math.exp(nll / max(ntok, 1))


def corpus_bleu(hyps, refs) -> float:
    """sacrebleu corpus BLEU of hypotheses against one reference each, both already tokenized."""
    import logging

    import sacrebleu

    logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # the text is tokenized on purpose
    return sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize="none").score


@torch.no_grad()
def bleu(task, model, split="test", beam=4, batch_size=128) -> float:
    """:func:`corpus_bleu` of beam search on ``split``, like ``fairseq-generate``."""
    from fairseq.dataclass.configs import GenerationConfig

    model.eval()
    generator = task.build_generator([model], GenerationConfig(beam=beam))
    tgt = task.target_dictionary
    hyps, refs = {}, {}
    for sample in _batches(task, model, split, max_sentences=batch_size):
        out = task.inference_step(generator, [model], sample)
        for i, sid in enumerate(sample["id"].tolist()):
            hyps[sid] = tgt.string(out[i][0]["tokens"].int().cpu(), None)
            ref = utils.strip_pad(sample["target"][i], tgt.pad()).int().cpu()
            refs[sid] = tgt.string(ref, None, escape_unk=True)
    ids = sorted(refs)
    return corpus_bleu([hyps[i] for i in ids], [refs[i] for i in ids])
