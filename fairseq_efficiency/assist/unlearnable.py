"""Unlearnable-instance filter: pairs whose loss does not fall are not "not yet learned".

A loss-based policy keeps what the Boss gets wrong. A misaligned or garbled pair stays
wrong at every visit, so AutoAssist's labels ``z = [loss > T]`` (eq. 4) are 1 for it
forever and the Assistant steers the Boss towards noise. What tells the two apart is the
*trajectory* of an instance's loss over training, not its level: dataset cartography
(Swayamdipta et al., EMNLP 2020) finds mislabelled instances in the "hard-to-learn"
region of training dynamics (persistently low confidence); dynamic sentence sampling
(Wang et al., ACL 2018) scores sentences by their loss decline between epochs.

Rule, per instance ``i`` over a window of its last ``V`` visits (oldest ``o``, newest ``n``),
with ``l`` its losses and ``m`` the corpus loss level when each visit happened::

    beta_i = slope of log l on log m over the V visits (least squares)
    F_c    = log(m_o / m_n)    fall of the corpus level over the window
    if F_c >= min_fall:        (otherwise the window says nothing; the flag stays)
        unlearnable_i = l_n > m_n  and  beta_i < alpha

``beta = 1``: the instance's loss falls with the corpus's; ``beta = 0``: it does not fall.
So a flagged pair is still above the corpus level and learns less than ``alpha`` of the
corpus's pace; a pair that was learned (below the level) is not flagged: AutoAssist already
skips it. On the 6000-pair ``small`` corpus (uniform, observed only, epochs 6-12) ``V = 6``,
``alpha = 0.25`` flagged 57-91% of the noisy pairs and <= 0.4% of every other class; ``V = 4``
up to 5% of the hard ones. A flagged instance's keep probability is the base
policy's times ``keep`` (not 0: it is still visited now and then, so its flag can be lifted).
The corpus level ``m`` is a bias-corrected EMA over Boss batches of the batch-mean loss of
unflagged instances, each weighted by ``1 / max(p, 0.1)`` (``p``: its base keep probability,
Horvitz-Thompson, clipped), so the policy's own preference for high losses does not bias it.

Memory: per instance a visit count, ``V`` losses and ``V`` levels (float32) and a flag.
"""
import logging

import numpy as np

from fairseq_efficiency.assist.selection import Selector
from fairseq_efficiency.data.synthetic import KINDS as KIND_NAMES  # classes of {split}.kind

logger = logging.getLogger(__name__)

LEVEL_DECAY = 0.95  # EMA of the corpus level over Boss batches
MIN_P = 0.1         # keep probabilities below count as this in the level's weights (<= 10)


class KeepAll(Selector):
    """Every candidate kept: ``uniform`` through the bucketed iterator (neutral, see
    :mod:`.bucketing`), for the filter to act on alone."""

    def keep_prob(self, idx):
        return np.ones(len(idx))


class UnlearnableFilter(Selector):
    """Wraps a loss-based policy and down-weights the instances the rule above flags."""

    def __init__(self, inner, n, shard, visits=6, alpha=0.25, keep=0.1, min_fall=0.05,
                 kinds=None):
        if int(visits) < 2 or not 0 <= alpha <= 1 or not 0 <= keep <= 1 or min_fall < 0:
            raise ValueError(f"visits {visits} (>= 2), alpha {alpha}, keep {keep} (in [0, 1]), "
                             f"min_fall {min_fall} (>= 0)")
        self.inner = inner
        self.shard = np.asarray(shard, dtype=np.int64)
        self.window, self.alpha, self.keep = int(visits), float(alpha), float(keep)
        self.min_fall = float(min_fall)
        self.visits = np.zeros(n, dtype=np.int32)
        self.loss_hist = np.full((n, self.window), np.nan, dtype=np.float32)
        self.level_hist = np.full((n, self.window), np.nan, dtype=np.float32)
        self.flag = np.zeros(n, dtype=bool)
        self.level_ema, self.level_steps = 0.0, 0
        self.kinds = None if kinds is None else np.asarray(kinds, dtype=np.int8)
        # mean keep probability per kind at the last epoch start: kp_ with the filter,
        # kp0_ the base policy's alone
        self.kind_keep = {}

    # the inner policy's rules and per-epoch behaviour
    @property
    def zero_is_final(self):
        return self.inner.zero_is_final

    @property
    def full_epochs(self):
        return getattr(self.inner, "full_epochs", False)

    @property
    def level(self):
        """Corpus loss level m (nan before the first Boss batch)."""
        if self.level_steps == 0:
            return float("nan")
        return self.level_ema / (1.0 - LEVEL_DECAY ** self.level_steps)

    def keep_prob(self, idx):
        p = np.asarray(self.inner.keep_prob(idx), dtype=np.float64)
        return np.where(self.flag[idx], self.keep * p, p)

    def observe(self, ids, losses):
        ids, losses = np.asarray(ids, dtype=np.int64), np.asarray(losses, dtype=np.float64)
        p = np.asarray(self.inner.keep_prob(ids), dtype=np.float64)  # before it learns
        self.inner.observe(ids, losses)  # as given: the base policy learns as without the filter
        ids, first = np.unique(ids, return_index=True)
        losses, p = losses[first], p[first]
        ok = np.isfinite(losses)
        ids, losses, p = ids[ok], np.maximum(losses[ok], 1e-6), p[ok]
        if not len(ids):
            return
        clean = ~self.flag[ids]
        if clean.any():
            w = 1.0 / np.maximum(p[clean], MIN_P)
            self.level_ema = (LEVEL_DECAY * self.level_ema
                              + (1 - LEVEL_DECAY) * float((w * losses[clean]).sum() / w.sum()))
            self.level_steps += 1
        m = self.level
        if not np.isfinite(m):  # every instance of the first batches flagged: nothing to judge
            return
        slot = self.visits[ids] % self.window
        self.loss_hist[ids, slot] = losses
        self.level_hist[ids, slot] = m
        self.visits[ids] += 1
        self._judge(ids[self.visits[ids] >= self.window])

    def _judge(self, ids):
        """The rule of the module docstring on each instance's last ``window`` visits."""
        if not len(ids):
            return
        old, new = self.visits[ids] % self.window, (self.visits[ids] - 1) % self.window
        log_l = np.log(self.loss_hist[ids].astype(np.float64))
        log_m = np.log(self.level_hist[ids].astype(np.float64))
        dm = log_m - log_m.mean(1, keepdims=True)
        var = (dm * dm).sum(1)
        beta = ((log_l - log_l.mean(1, keepdims=True)) * dm).sum(1) / np.maximum(var, 1e-12)
        rows = np.arange(len(ids))
        f_c = log_m[rows, old] - log_m[rows, new]
        above = log_l[rows, new] > log_m[rows, new]
        judged = f_c >= self.min_fall
        self.flag[ids[judged]] = (above & (beta < self.alpha))[judged]

    def start_epoch(self, epoch):
        self.inner.start_epoch(epoch)
        if self.kinds is not None:
            p0 = np.asarray(self.inner.keep_prob(self.shard), dtype=np.float64)
            p = np.where(self.flag[self.shard], self.keep * p0, p0)
            k = self.kinds[self.shard]
            self.kind_keep = {}
            for c, name in enumerate(KIND_NAMES):
                if (k == c).any():
                    self.kind_keep[f"kp_{name}"] = float(p[k == c].mean())
                    self.kind_keep[f"kp0_{name}"] = float(p0[k == c].mean())

    def set_update(self, update_num):
        self.inner.set_update(update_num)

    def start_pass(self, passes):
        self.inner.start_pass(passes)

    def stats(self):
        out = dict(self.inner.stats())
        f = self.flag[self.shard]
        out["unl_share"] = float(f.mean()) if len(f) else 0.0
        out["unl_level"] = self.level
        if self.kinds is not None:
            k = self.kinds[self.shard]
            for c, name in enumerate(KIND_NAMES):
                if (k == c).any():
                    out[f"unl_{name}"] = float(f[k == c].mean())
            out.update(self.kind_keep)
        return out

    # -- state: the inner policy's state with one more key, so either kind of run loads it --
    def state_dict(self):
        return {**self.inner.state_dict(), "unlearnable": {
            "window": self.window, "visits": self.visits.copy(),
            "loss_hist": self.loss_hist.copy(), "level_hist": self.level_hist.copy(),
            "flag": self.flag.astype(np.uint8), "level_ema": self.level_ema,
            "level_steps": self.level_steps}}

    def load_state_dict(self, st):
        self.inner.load_state_dict(st)
        u = st.get("unlearnable")
        if u is None:
            logger.info("unlearnable filter: the checkpoint has no filter state; it starts now")
            return
        n = len(self.visits)
        if int(u["window"]) != self.window:
            raise ValueError(f"the checkpoint's unlearnable filter has a window of {u['window']} "
                             f"visits, this run {self.window} (--assist-unlearnable-visits)")
        shapes = {"visits": (n,), "loss_hist": (n, self.window),
                  "level_hist": (n, self.window), "flag": (n,)}
        for key, shape in shapes.items():
            if np.shape(u[key]) != shape:
                raise ValueError(f"unlearnable filter state {key!r} has shape {np.shape(u[key])}, "
                                 f"expected {shape}: a different training set")
        visits = np.asarray(u["visits"])
        if visits.size and visits.min() < 0:
            raise ValueError("unlearnable filter state: negative visit counts")
        self.visits[:] = visits
        self.loss_hist[:] = u["loss_hist"]
        self.level_hist[:] = u["level_hist"]
        self.flag[:] = np.asarray(u["flag"]) != 0
        self.level_ema, self.level_steps = float(u["level_ema"]), int(u["level_steps"])


def read_kinds(path, n):
    """Instance class per line of ``{split}.kind`` (the embedded corpus), or None when the
    file is absent or does not describe ``n`` pairs of known classes."""
    codes = {name: i for i, name in enumerate(KIND_NAMES)}
    out = np.zeros(n, dtype=np.int8)
    try:
        with open(path, encoding="utf-8") as f:
            i = 0
            for line in f:
                name = line.strip()
                if i >= n or name not in codes:
                    logger.warning("%s does not list %d known instance classes: no per-class "
                                   "figures", path, n)
                    return None
                out[i] = codes[name]
                i += 1
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return out if i == n else None


def wrap(cfg, selector, n, shard, kind_path=None):
    """``selector`` wrapped in the filter when ``--assist-unlearnable`` is set."""
    if not getattr(cfg, "assist_unlearnable", False):
        return selector
    kinds = read_kinds(kind_path, n) if kind_path else None
    return UnlearnableFilter(selector, n, shard, cfg.assist_unlearnable_visits,
                             cfg.assist_unlearnable_alpha, cfg.assist_unlearnable_keep,
                             cfg.assist_unlearnable_min_fall, kinds)
