"""translation_efficiency: equivalence with fairseq's translation task and the hook protocol."""
import json
import os

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.tasks.translation import TranslationTask
from fairseq.trainer import Trainer

from fairseq_efficiency.hooks import EfficiencyHook, HookList
from fairseq_efficiency.task import TranslationEfficiencyTask
from tests.helpers import assert_one_line_error, run_cli, train_args


def build(data_bin, save_dir, task, criterion="sentence_cross_entropy", extra=()):
    """An in-process fairseq trainer, set up exactly as fairseq-train sets it up."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, train_args(data_bin, save_dir, "--task", task, "--criterion", criterion,
                           "--dropout", "0", *extra))
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(1)
    t = tasks.setup_task(cfg.task)
    t.load_dataset("train", combine=True, epoch=1)
    t.load_dataset("valid", combine=False, epoch=1)
    model = t.build_model(cfg.model)
    crit = t.build_criterion(cfg.criterion)
    return cfg, t, Trainer(cfg, t, model, crit)


def run_updates(trainer, n):
    epoch_itr = trainer.get_train_iterator(epoch=1)
    itr = epoch_itr.next_epoch_itr(shuffle=True)
    losses, grads = [], []
    for _, sample in zip(range(n), itr):
        log = trainer.train_step([sample])
        losses.append(float(log["loss"]))
    for p in trainer.model.parameters():
        grads.append(p.detach().clone())
    return epoch_itr, losses, grads


def test_same_losses_and_weights_as_translation(tiny_data_bin, tmp_path):
    _, t1, tr1 = build(tiny_data_bin, tmp_path / "a", "translation", "label_smoothed_cross_entropy")
    _, t2, tr2 = build(tiny_data_bin, tmp_path / "b", "translation_efficiency")
    assert type(t1) is TranslationTask and isinstance(t2, TranslationEfficiencyTask)
    _, l1, w1 = run_updates(tr1, 4)
    _, l2, w2 = run_updates(tr2, 4)
    assert l1 == l2  # bitwise: no feature switched on means fairseq's task
    for a, b in zip(w1, w2):
        assert torch.equal(a, b)


def test_cli_losses_match_translation(tiny_data_bin, tmp_path):
    logs = {}
    for task in ("translation", "translation_efficiency"):
        res = run_cli("fairseq_cli.train", train_args(
            tiny_data_bin, tmp_path / task, "--task", task, "--max-update", "6",
            "--log-format", "json", "--no-save", "--criterion", "label_smoothed_cross_entropy"))
        logs[task] = [json.loads(line.split("| train_inner | ")[1])["loss"]
                      for line in res.stdout.splitlines() + res.stderr.splitlines()
                      if "| train_inner | " in line]
    assert len(logs["translation"]) == 6
    assert logs["translation"] == logs["translation_efficiency"]


class Recorder(EfficiencyHook):
    """Records every call, and keeps a counter that must survive checkpoints."""

    name = "recorder"
    needs_sentence_losses = True

    def __init__(self):
        self.calls, self.steps, self.losses, self.models, self.reduced = [], 0, [], [], []

    def on_model_built(self, model):
        self.calls.append("on_model_built")

    def on_epoch_start(self, epoch, model):
        self.calls.append(f"on_epoch_start:{epoch}")

    def before_train_step(self, sample, model, update_num):
        self.calls.append("before_train_step")

    def after_train_step(self, out):
        self.calls.append("after_train_step")
        self.steps += 1
        self.losses.append((out.ids.clone(), out.sentence_loss.clone()))
        self.models.append(out.model)

    def before_optimizer_step(self, model, optimizer, update_num):
        # gradients are final here: the hook may read or edit them
        assert any(p.grad is not None for p in model.parameters())
        self.calls.append("before_optimizer_step")

    def after_optimizer_step(self, model, optimizer, update_num):
        self.calls.append("after_optimizer_step")

    def reduce_metrics(self, logging_outputs, train):
        self.reduced.append(train)

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_hook_protocol_and_checkpoint_state(tiny_data_bin, tmp_path):
    cfg, task, trainer = build(tiny_data_bin, tmp_path, "translation_efficiency")
    rec = Recorder()
    task.hooks = HookList([rec])
    trainer.criterion.report_sentence_loss = True
    epoch_itr, _, _ = run_updates(trainer, 1)
    task.begin_epoch(1, trainer.model)  # what fairseq's train loop does at epoch start
    itr = epoch_itr.next_epoch_itr(shuffle=False)
    for _, sample in zip(range(2), itr):
        trainer.train_step([sample])
    assert rec.calls[-4:] == ["before_train_step", "after_train_step",
                              "before_optimizer_step", "after_optimizer_step"]
    assert "on_epoch_start:1" in rec.calls and rec.steps == 3
    assert rec.models == [trainer.model] * 3 and rec.reduced == [True] * 3

    ids, sent_loss = rec.losses[-1]
    assert sent_loss.shape == ids.shape and (sent_loss > 0).all()
    # validation batches are reduced with train=False
    trainer.valid_step(next(iter(trainer.get_valid_iterator("valid").next_epoch_itr())))
    assert rec.reduced == [True] * 3 + [False]
    trainer.train_step([sample])
    assert rec.reduced[-1] is True

    # the hook state is saved through fairseq's checkpoint code and restored on resume
    os.makedirs(cfg.checkpoint.save_dir, exist_ok=True)
    checkpoint_utils.save_checkpoint(cfg.checkpoint, trainer, epoch_itr, None)
    state = torch.load(os.path.join(cfg.checkpoint.save_dir, "checkpoint_last.pt"), weights_only=True)
    assert state["extra_state"]["TranslationEfficiencyTask"]["hooks"]["recorder"] == {"steps": 4}
    _, task2, trainer2 = build(tiny_data_bin, tmp_path, "translation_efficiency")
    rec2 = Recorder()
    task2.hooks = HookList([rec2])
    checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer2)
    assert rec2.steps == 4



def test_sentence_losses_need_the_right_criterion(tiny_data_bin, tmp_path):
    cfg, task, _ = build(tiny_data_bin, tmp_path, "translation_efficiency")
    task.hooks = HookList([Recorder()])
    with pytest.raises(ValueError, match="--criterion sentence_cross_entropy"):
        task.build_criterion(convert_namespace_to_omegaconf(
            options.parse_args_and_arch(options.get_training_parser(), train_args(
                tiny_data_bin, tmp_path, "--task", "translation_efficiency",
                "--criterion", "cross_entropy"))).criterion)


def test_hooklist_rejects_two_iterator_owners():
    class Owner(EfficiencyHook):
        def train_batch_iterator(self, task, dataset, **kwargs):
            return None

    a, b = Owner(), Owner()
    a.name, b.name = "a", "b"
    with pytest.raises(ValueError, match="only one feature may own"):
        HookList([a, b])
    with pytest.raises(ValueError, match="share the name"):
        HookList([Recorder(), Recorder()])


def test_missing_data_dir_is_one_clear_line(tmp_path):
    res = run_cli("fairseq_cli.train", train_args(str(tmp_path / "nope"), tmp_path / "ck",
                                                  "--task", "translation_efficiency"), check=False)
    assert_one_line_error(res, f"data directory {tmp_path / 'nope'} does not exist")
