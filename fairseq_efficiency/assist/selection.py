"""Instance-selection policies: who decides whether a candidate reaches the Boss.

All policies share one interface, so AutoAssist and the baselines run through
the same candidate stream, the same batching (:mod:`.bucketing`) and the same budgets:

* :meth:`keep_prob(idx)` -- probability that each candidate is kept;
* :meth:`observe(ids, losses)` -- per-sentence Boss losses of a trained batch;
* :meth:`start_epoch(epoch)` -- per-epoch bookkeeping (curricula that change per epoch);
* :meth:`set_update(update_num)` -- the Boss's update number (curricula over updates,
  :mod:`.competence`).
* :meth:`start_pass(passes)` -- the candidate stream began pass ``passes + 1`` over the shard.

Policies:

* :class:`AutoAssistSelector` -- the learned Assistant (AutoAssist, Algorithm 1), after
  ``warmup_epochs`` epochs in which nothing is shrunk.
* :class:`SelfPacedSelector` -- self-paced learning (Kumar et al., 2010; AutoAssist's
  reference [22]): an instance is kept when its last Boss loss is at most the
  pace threshold lambda_e; lambda_e is the ``q_e`` quantile of the known losses with
  ``q_e = min(1, q_0 * growth^(e-2))`` growing every epoch. Epoch 1 and unseen
  instances are always kept (SPL needs a loss before it can exclude).
* :class:`DynamicSamplingSelector` -- dynamic sentence sampling (Wang et al., 2018):
  the criterion is an instance's relative loss decline between its last two
  observations, ``dif_i = (l_prev - l_cur) / l_prev``, min-max normalised; each
  epoch a ``sample_rate`` share of the data is drawn, ``1 - review_share`` of it in
  proportion to the criterion and ``review_share`` uniformly (the "review" of
  the rest), i.e. ``p_i = min(1, r * ((1 - a) * n w_i / sum(w) + a))``.
  Instances observed fewer than twice are always kept.
"""
import numpy as np

from fairseq_efficiency.assist.assistant import Assistant


class Selector:
    #: a keep probability of 0 is a rule (a curriculum's), not a small estimate: a refill
    #: that kept nothing for a whole pass never forces such candidates in
    zero_is_final = False

    @property
    def in_curriculum(self):
        """True while the policy still withholds part of the data by rule (a curriculum):
        validation losses are then not comparable with those of the finished schedule."""
        return False

    def keep_prob(self, idx):
        raise NotImplementedError

    def observe(self, ids, losses):
        pass

    def start_epoch(self, epoch):
        pass

    def set_update(self, update_num):
        pass

    def start_pass(self, passes):
        pass

    def stats(self):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, st):
        pass


class AutoAssistSelector(Selector):
    def __init__(self, features, assistant: Assistant, warmup_epochs: int = 0):
        self.features = features
        self.assistant = assistant
        self.warmup_epochs = int(warmup_epochs)
        self.epoch = 0

    def start_epoch(self, epoch):
        self.epoch = int(epoch)

    def keep_prob(self, idx):
        """Algorithm 1; during the warm-up epochs every candidate is kept (the Assistant
        still learns from every Boss batch)."""
        if self.warmup_epochs and self.epoch <= self.warmup_epochs:
            return np.ones(len(idx))
        return self.assistant.keep_prob(self.features[idx])

    def observe(self, ids, losses):
        self.assistant.partial_fit(self.features[ids], losses)

    def start_pass(self, passes):
        """Pass boundaries of the candidate stream (the authors' per-pass threshold)."""
        while self.assistant.passes_ < passes:
            self.assistant.start_pass()

    def stats(self):
        return self.assistant.diagnostics()

    def state_dict(self):
        return {"assistant": self.assistant.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, st):
        self.assistant.load_state_dict(st["assistant"])
        self.epoch = int(st.get("epoch", self.epoch))


class _LossMemory(Selector):
    """Keeps each instance's last (and previous) Boss loss."""

    def __init__(self, n, shard):
        self.shard = np.asarray(shard, dtype=np.int64)
        self.cur = np.full(n, np.nan, dtype=np.float32)
        self.prev = np.full(n, np.nan, dtype=np.float32)
        self.epoch = 0

    def observe(self, ids, losses):
        ids = np.asarray(ids, dtype=np.int64)
        self.prev[ids] = self.cur[ids]
        self.cur[ids] = np.asarray(losses, dtype=np.float32)

    def state_dict(self):
        return {"cur": self.cur.copy(), "prev": self.prev.copy(), "epoch": self.epoch}

    def load_state_dict(self, st):
        if len(st["cur"]) != len(self.cur):
            raise ValueError("selection state is for a different training set size")
        self.cur[:] = st["cur"]
        self.prev[:] = st["prev"]
        self.epoch = st["epoch"]


class SelfPacedSelector(_LossMemory):
    def __init__(self, n, shard, start_quantile=0.5, growth=1.3):
        super().__init__(n, shard)
        self.start_quantile = float(start_quantile)
        self.growth = float(growth)
        self.pace = float("inf")  # lambda_e
        self.quantile = 1.0

    def start_epoch(self, epoch):
        if epoch == self.epoch:
            return
        self.epoch = epoch
        known = self.cur[self.shard]
        known = known[np.isfinite(known)]
        self.quantile = 1.0 if epoch < 2 else min(1.0, self.start_quantile * self.growth ** (epoch - 2))
        if self.quantile >= 1.0 or len(known) == 0:
            self.pace = float("inf")
        else:
            self.pace = float(np.quantile(known, self.quantile))

    def keep_prob(self, idx):
        loss = self.cur[idx]
        return np.where(np.isnan(loss) | (loss <= self.pace), 1.0, 0.0)

    def stats(self):
        return {"spl_pace": self.pace, "spl_quantile": self.quantile}

    def state_dict(self):
        return {**super().state_dict(), "pace": self.pace, "quantile": self.quantile}

    def load_state_dict(self, st):
        super().load_state_dict(st)
        self.pace, self.quantile = st["pace"], st["quantile"]


class DynamicSamplingSelector(_LossMemory):
    def __init__(self, n, shard, sample_rate=0.8, review_share=0.2):
        super().__init__(n, shard)
        self.sample_rate = float(sample_rate)
        self.review_share = float(review_share)
        self.p = np.ones(n, dtype=np.float32)

    def start_epoch(self, epoch):
        if epoch == self.epoch:
            return
        self.epoch = epoch
        idx = self.shard
        prev, cur = self.prev[idx], self.cur[idx]
        both = np.isfinite(prev) & np.isfinite(cur) & (prev > 0)
        p = np.ones(len(idx), dtype=np.float64)
        if both.any():
            dif = (prev[both] - cur[both]) / prev[both]
            span = dif.max() - dif.min()
            w = (dif - dif.min()) / span if span > 0 else np.ones_like(dif)
            m = int(both.sum())
            prop = m * w / w.sum() if w.sum() > 0 else np.ones_like(w)
            a, r = self.review_share, self.sample_rate
            p[both] = np.minimum(1.0, r * ((1.0 - a) * prop + a))
        self.p[:] = 1.0
        self.p[idx] = p

    def keep_prob(self, idx):
        return self.p[idx].astype(np.float64)

    def stats(self):
        return {"ds_expected_keep": float(self.p[self.shard].mean()) if len(self.shard) else 1.0}

    def state_dict(self):
        return {**super().state_dict(), "p": self.p.copy()}

    def load_state_dict(self, st):
        super().load_state_dict(st)
        self.p[:] = st["p"]
