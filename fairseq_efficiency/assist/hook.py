"""fairseq adapter: the instance-selection hook of ``translation_efficiency``.

``--instance-selection autoassist|self-paced|dynamic-sampling|competence`` makes
this hook own the training batch iterator (:mod:`.iterator`), feed the policy with
the Boss's per-sentence losses (token-mean NLL, or label-smoothed with
``--assist-loss-smoothing``, from ``sentence_cross_entropy``, no extra forward;
``competence`` needs only the update number) and log its accounting through
``fairseq.logging.metrics``.

Data parallel: each worker owns an Assistant over its own shard (a fixed random
partition of the training set); the number of batches per epoch is agreed
collectively. fairseq writes checkpoints from rank 0 only, so every rank's
state is gathered at the start of each validation (a point all ranks pass, and
fairseq validates before every mid-epoch save and, by default, every
end-of-epoch save); on resume each rank restores its own entry. Single-process
runs snapshot at save time.
"""
import logging
import math
import os

import numpy as np
from fairseq import utils

from fairseq_efficiency.assist import config as aa_config
from fairseq_efficiency.assist import presets, unlearnable
from fairseq_efficiency.assist.assistant import Assistant
from fairseq_efficiency.assist.iterator import ShrinkingEpochBatchIterator
from fairseq_efficiency.assist.selection import (AutoAssistSelector, DynamicSamplingSelector,
                                                 SelfPacedSelector)
from fairseq_efficiency.assist.bucketing import BucketBatcher, LengthBucketStream
from fairseq_efficiency.assist.worker import AssistWorker
from fairseq_efficiency.compat import restart_best_tracking
from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.hooks import EfficiencyHook

logger = logging.getLogger(__name__)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _all_gather(obj, world):
    dist = _dist()
    if world <= 1 or dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class InstanceSelectionHook(EfficiencyHook):
    name = "instance_selection"
    needs_sentence_losses = True

    def __init__(self, cfg, selection):
        self.cfg = cfg
        self.selection = selection
        self.needs_sentence_losses = selection != "competence"
        self.worker = None
        self.itr = None
        self.rank, self.world = 0, 1
        self.boss_tokens = 0
        self.update_num = 0
        self._gathered = None
        self._gathered_at = None
        self._curriculum_logged = False
        self.restored_from = None  # fingerprint of the Assistant this run resumed from
        # label smoothing of the per-sentence losses the criterion reports to this hook
        self.sentence_loss_smoothing = float(getattr(cfg, "assist_loss_smoothing", 0.0))

    # -- building -----------------------------------------------------------------------
    def _split_name(self, task, dataset):
        for name, ds in task.datasets.items():
            if ds is dataset:
                return name
        return "train"

    def _build(self, task, dataset, kw):
        cfg = self.cfg
        self.rank, self.world = int(kw.get("shard_id", 0)), int(kw.get("num_shards", 1))
        seed = int(kw.get("seed", 1))
        n = len(dataset)
        indices = dataset.ordered_indices()
        indices = task.filter_indices_by_size(indices, dataset, kw.get("max_positions"),
                                              kw.get("ignore_invalid_inputs", False))
        valid = np.asarray(indices, dtype=np.int64)
        part = valid[np.random.default_rng(seed).permutation(len(valid))][self.rank::self.world]
        if len(part) == 0:
            raise PluginConfigError(f"{self.selection}: the training data shard of worker {self.rank} of "
                             f"{self.world} is empty ({len(valid)} usable training pairs)")
        in_shard = np.zeros(n, dtype=bool)
        in_shard[part] = True
        self.shard = valid[in_shard[valid]]  # in fairseq's length order
        src = np.asarray(dataset.src_sizes, dtype=np.int64)
        tgt = (np.asarray(dataset.tgt_sizes, dtype=np.int64) if dataset.tgt_sizes is not None
               else np.zeros(n, dtype=np.int64))
        self.ntokens = src + tgt
        self.num_tokens = np.asarray(dataset.num_tokens_vec(np.arange(n)), dtype=np.int64)
        max_tokens, max_sentences = kw.get("max_tokens"), kw.get("max_sentences")
        mult = kw.get("required_batch_size_multiple", 1)
        rng = np.random.default_rng([seed, self.rank, 7919])
        if self.selection == "autoassist":
            from fairseq_efficiency.assist.features import load_or_build

            data_dir = utils.split_paths(task.cfg.data)[0]
            x, path = load_or_build(data_dir, self._split_name(task, dataset),
                                    task.cfg.source_lang, task.cfg.target_lang,
                                    len(task.src_dict), len(task.tgt_dict),
                                    task.src_dict.nspecial, cfg.assist_rebuild_features,
                                    kind=str(cfg.assist_features))
            if x.shape[0] != n:
                raise PluginConfigError(f"features {path} have {x.shape[0]} rows but the training set "
                                 f"has {n} pairs (sharded data directories are not supported)")
            assistant = Assistant(x.shape[1], lr=cfg.assist_lr, l2=cfg.assist_l2,
                                  threshold_decay=cfg.assist_threshold_decay,
                                  confidence_decay=cfg.assist_confidence_decay,
                                  min_keep=cfg.assist_min_keep, seed=seed + self.rank,
                                  threshold=str(cfg.assist_threshold),
                                  floor_on=str(cfg.assist_floor_on),
                                  mini_steps=cfg.assist_mini_steps)
            selector = AutoAssistSelector(x, assistant, cfg.assist_warmup_epochs)
        elif self.selection == "competence":
            from fairseq_efficiency.assist import competence
            from fairseq_efficiency.assist.features import split_prefix

            prefix = None
            if str(cfg.competence_difficulty) == "rarity":
                prefix = split_prefix(utils.split_paths(task.cfg.data)[0],
                                      self._split_name(task, dataset), task.cfg.source_lang,
                                      task.cfg.target_lang) + task.cfg.source_lang
            selector = competence.build_selector(cfg, dataset, self.shard, prefix,
                                                 task.src_dict.nspecial)
        elif self.selection == "self-paced":
            selector = SelfPacedSelector(n, self.shard, cfg.spl_start_quantile, cfg.spl_growth)
        elif self.selection == "uniform":  # only with --assist-unlearnable
            selector = unlearnable.KeepAll()
        else:
            selector = DynamicSamplingSelector(n, self.shard, cfg.ds_sample_rate, cfg.ds_review_share)
        selector = unlearnable.wrap(cfg, selector, n, self.shard, os.path.join(
            utils.split_paths(task.cfg.data)[0], self._split_name(task, dataset) + ".kind"))
        # candidates in fairseq's length buckets; kept ones merged with their neighbours
        stream = LengthBucketStream(self.shard, n, src, tgt, self.num_tokens, max_tokens,
                                    max_sentences, rng, mult, cfg.assist_pool_batches)
        batcher = BucketBatcher(stream)
        self.n_pass = batcher.batches_per_pass()  # fairseq's batches of the shard (epoch unit)

        def collate(b):
            return dataset.collater([dataset[int(i)] for i in b])

        self.worker = AssistWorker(selector, stream, batcher, collate,
                                   self.ntokens, rng, queue_size=cfg.assist_queue_size,
                                   name=self.selection)
        self.first_batch = collate(self.shard[:1])
        logger.info("%s: worker %d/%d shard of %d pairs, %d batches per pass",
                    self.selection, self.rank, self.world, len(self.shard), self.n_pass)

    def train_batch_iterator(self, task, dataset, **kwargs):
        if self.worker is None:
            self._build(task, dataset, kwargs)
        self.itr = ShrinkingEpochBatchIterator(self.worker, kwargs.get("epoch", 1),
                                               self._plan_epoch, self.first_batch)
        return self.itr

    def _plan_epoch(self, epoch):
        """N_e: batches one candidate pass is expected to fill (max over workers)."""
        w = self.worker
        with w.lock:
            w.selector.start_epoch(epoch)
            p = np.clip(w.selector.keep_prob(self.shard), 0.0, 1.0)
        t = self.num_tokens[self.shard].astype(np.float64)
        frac = float((p * t).sum() / max(t.sum(), 1.0))
        if getattr(w.selector, "full_epochs", False):  # a curriculum: one pass of updates
            frac = 1.0
        local = max(1, int(math.ceil(self.n_pass * frac)))
        n = max(_all_gather(local, self.world))
        logger.info("%s: epoch %d = %d batches (expected keep rate %.3f, worker %d wants %d)",
                    self.selection, epoch, n, frac, self.rank, local)
        return n

    # -- training loop ------------------------------------------------------------------
    def before_train_step(self, sample, model, update_num):
        if self.worker is not None:
            self.worker.selector.set_update(update_num)

    def after_train_step(self, out):
        if self.worker is None or out.ignore_grad:
            return
        ids = out.ids.detach().cpu().numpy().astype(np.int64)
        self.boss_tokens += int(self.ntokens[ids].sum())
        self.update_num = out.update_num
        if out.sentence_loss is not None:
            self.worker.put_losses(ids, out.sentence_loss.detach().float().cpu().numpy())

    def on_valid_epoch_start(self, epoch, model):
        if self.worker is not None and self.worker.selector.in_curriculum:
            # the losses of a model still in its curriculum do not compare with later ones
            if not self._curriculum_logged:
                logger.info("%s: checkpoint_best.pt and --patience count from the end of "
                            "the curriculum", self.selection)
                self._curriculum_logged = True
            restart_best_tracking()
        if self.worker is not None and self.world > 1:
            self._gathered = _all_gather(self._snapshot(), self.world)
            self._gathered_at = self.update_num

    def reduce_metrics(self, logging_outputs, train):
        from fairseq.logging import metrics

        if self.worker is None or not train:
            return
        self.worker.check()
        c = dict(self.worker.counters)
        metrics.log_scalar("keep_rate", self.worker.recent_keep_rate, weight=0, round=3)
        for k, v in self.worker.selector.stats().items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                metrics.log_scalar(k, v, weight=0, round=3)
        metrics.log_scalar("boss_tok", self.boss_tokens, weight=0, round=0)
        metrics.log_scalar("cand_tok", c["candidate_tokens"], weight=0, round=0)
        metrics.log_scalar("skip_tok", c["candidate_tokens"] - c["kept_tokens"], weight=0, round=0)
        metrics.log_scalar("assist_wait_s", self.worker.wait_s, weight=0, round=2)
        if c["dropped_loss_batches"]:
            metrics.log_scalar("assist_dropped", c["dropped_loss_batches"], weight=0, round=0)
        if c["forced_refills"]:
            metrics.log_scalar("assist_forced", c["forced_refills"], weight=0, round=0)

    # -- checkpoints -----------------------------------------------------------------------
    def _snapshot(self):
        return {"worker": self.worker.snapshot(), "boss_tokens": self.boss_tokens,
                "num_batches": dict(self.itr._num_batches) if self.itr is not None else {},
                "fingerprint": self.fingerprint(), "restored_from": self.restored_from}

    def fingerprint(self):
        sel = getattr(self.worker.selector, "inner", self.worker.selector)  # (a filter's)
        if isinstance(sel, AutoAssistSelector):
            return sel.assistant.fingerprint()
        return "-"

    def state_dict(self):
        if self.worker is None:
            return {}
        own = self._snapshot()
        if self.world == 1:
            ranks = [own]
        else:
            if self._gathered is None:
                raise RuntimeError(f"{self.selection}: with {self.world} workers the Assistant "
                                   "states are gathered at validation; do not combine "
                                   "--disable-validation with checkpoints")
            if self._gathered_at != self.update_num:
                logger.warning("%s: states of workers > 0 are from update %s (now %s): validate "
                               "before every save to checkpoint them exactly", self.selection,
                               self._gathered_at, self.update_num)
            ranks = [own] + list(self._gathered[1:])
        logger.info("%s: saving state of %d worker(s), Assistant %s", self.selection, len(ranks),
                    self.fingerprint())
        return {"selection": self.selection, "world_size": self.world, "ranks": ranks}

    def ready_for_state(self):
        return self.itr is not None  # the worker and the iterator it restores exist

    def load_state_dict(self, state):
        if not state:
            return
        if state["selection"] != self.selection:
            raise PluginConfigError(f"the checkpoint was trained with --instance-selection "
                             f"{state['selection']}, not {self.selection}")
        if state["world_size"] != self.world:
            raise PluginConfigError(f"the checkpoint holds {self.selection} states of "
                             f"{state['world_size']} workers, this run has {self.world}")
        mine = state["ranks"][self.rank]
        self.worker.restore(mine["worker"])
        self.boss_tokens = mine["boss_tokens"]
        self.restored_from = self.fingerprint()
        for e, nb in mine["num_batches"].items():  # the epoch plans, N_e
            self.itr.set_num_batches(int(e), nb)
        logger.info("%s: restored worker %d state, Assistant %s", self.selection, self.rank,
                    self.fingerprint())

    def close(self):
        if self.worker is not None:
            self.worker.close()


def build(cfg):
    if not hasattr(cfg, "instance_selection"):
        return None
    cfg = presets.resolve(cfg)  # --assist-preset (a view; options given explicitly win)
    selection = aa_config.validate(cfg)
    if selection == "uniform" and not getattr(cfg, "assist_unlearnable", False):
        return None
    return InstanceSelectionHook(cfg, selection)
