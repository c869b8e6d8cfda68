"""Competence-based curriculum (Platanios et al., NAACL 2019) as an instance-selection policy.

Each training pair gets a difficulty ``d(s_i)`` (section 3.1):

* ``length`` -- the number of source tokens;
* ``rarity`` -- ``-sum_k log p(w_k)`` over the source tokens, with unigram
  probabilities ``p`` estimated on the source side of the training set.

Difficulties become scores in ``[0, 1)`` through the empirical CDF of the
training set (section 3.1; here the share of sentences that are *strictly*
easier, so the easiest sentences score 0 and are available from the first
update even when many sentences tie, e.g. under ``length``). The model's
competence at update ``t`` is the square-root schedule (section 3.2, eq. 7)

    c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2)),   c0 = 0.01,

and a candidate is kept (probability 1) iff its score is at most ``c(t)``;
every other candidate is skipped (probability 0). Candidates are drawn
uniformly, so the batches are uniform samples of the competent subset, as in
Algorithm 1 of the paper. No per-sentence loss is needed.

While c(t) < 1 the model is validated on sentences harder than those it trains
on, so its validation loss may rise by design: ``checkpoint_best.pt`` and
``--patience`` count from the end of the curriculum (the hook restarts fairseq's
best-loss tracking at every validation before it).
"""
import numpy as np

from fairseq_efficiency.assist.selection import Selector

DIFFICULTIES = ("length", "rarity")


def competence(t, steps, c0=0.01):
    """Square-root competence c(t) (eq. 7): c(0) = c0, c(T) = 1, then constant."""
    if steps <= 0:
        raise ValueError(f"competence steps T must be > 0, got {steps}")
    t = max(float(t), 0.0)
    if t >= steps:
        return 1.0
    return min(1.0, float(np.sqrt(t * (1.0 - c0 * c0) / steps + c0 * c0)))


def length_difficulty(src_sizes):
    """Sentence length (section 3.1): the number of source tokens."""
    return np.asarray(src_sizes, dtype=np.float64)


def rarity_difficulty(tokens, sizes, nspecial=0):
    """Word rarity (section 3.1): ``-sum_k log p(w_k)`` per sentence.

    ``tokens`` is the flat array of source token ids of all sentences, ``sizes`` the
    sentence lengths; ids below ``nspecial`` (``</s>``, padding, ...) are left out of
    both the unigram estimate and the sums.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if int(sizes.sum()) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but the sentence lengths sum to {int(sizes.sum())}")
    if len(tokens) and tokens.min() < 0:
        raise ValueError("negative token id")
    words = tokens >= nspecial
    counts = np.bincount(tokens[words], minlength=int(tokens.max(initial=0)) + 1)
    total = counts.sum()
    logp = np.zeros(len(counts))
    seen = counts > 0
    logp[seen] = np.log(counts[seen] / total)
    rows = np.repeat(np.arange(len(sizes)), sizes)
    return -np.bincount(rows[words], weights=logp[tokens[words]], minlength=len(sizes))


def difficulty_cdf(d):
    """CDF score of each difficulty: the share of sentences strictly easier, in ``[0, 1)``."""
    d = np.asarray(d, dtype=np.float64)
    if len(d) == 0:
        return d
    return np.searchsorted(np.sort(d), d, side="left") / len(d)


class CompetenceSelector(Selector):
    """Keeps the candidates whose difficulty score is at most the competence c(t).

    ``scores[i]`` is pair ``i``'s CDF score (any value for pairs outside the shard).
    The training loop reports the update number through :meth:`set_update`; it is
    part of the state, so a resumed run continues the schedule where it stopped.
    An epoch stays one pass worth of batches (``full_epochs``): a curriculum changes
    which instances are trained, not how many updates there are.
    """

    full_epochs = True
    zero_is_final = True

    def __init__(self, scores, steps, c0=0.01):
        if not 0 < c0 <= 1:
            raise ValueError(f"c0 must be in (0, 1], got {c0}")
        competence(0, steps, c0)  # validates steps
        self.scores = np.asarray(scores, dtype=np.float64)
        self.steps = float(steps)
        self.c0 = float(c0)
        self.update = 0

    def set_update(self, update_num):
        self.update = max(self.update, int(update_num))

    @property
    def competence(self):
        return competence(self.update, self.steps, self.c0)

    @property
    def in_curriculum(self):
        return self.competence < 1.0

    def keep_prob(self, idx):
        return (self.scores[idx] <= self.competence).astype(np.float64)

    def stats(self):
        return {"competence": self.competence}

    def state_dict(self):
        return {"update": self.update, "steps": self.steps, "c0": self.c0}

    def load_state_dict(self, st):
        self.update = int(st["update"])


def build_selector(cfg, dataset, shard, src_prefix=None, nspecial=0):
    """The selector for a fairseq ``LanguagePairDataset``: difficulties of the shard's
    pairs turned into CDF scores over the shard (the whole usable training set with one
    worker). ``src_prefix`` is the binarized source file prefix (``rarity`` only)."""
    shard = np.asarray(shard, dtype=np.int64)
    n = len(dataset)
    kind = str(cfg.competence_difficulty)
    if kind == "length":
        d = length_difficulty(dataset.src_sizes)
    else:
        from fairseq_efficiency.assist.features import read_token_ids

        tokens, sizes = read_token_ids(src_prefix)
        if len(sizes) != n:
            raise ValueError(f"{src_prefix}: {len(sizes)} sentences but the training set has {n}")
        d = rarity_difficulty(tokens, sizes, nspecial)
    scores = np.ones(n)
    scores[shard] = difficulty_cdf(d[shard])
    return CompetenceSelector(scores, cfg.competence_steps, cfg.competence_c0)
