"""The instance-selection hook in a fairseq trainer: restored state waits for the worker and
the iterator it restores; only training batches are accounted in the logged metrics."""
from fairseq.logging import metrics

from tests.test_task import build, run_updates

SELF_PACED = ("--instance-selection", "self-paced")


def test_restored_state_waits_for_the_iterator_and_resumes_the_accounting(tiny_data_bin,
                                                                           tmp_path):
    _, task, trainer = build(tiny_data_bin, tmp_path / "a", "translation_efficiency",
                             extra=SELF_PACED)
    hook = task.hooks.hooks[0]
    try:
        epoch_itr, _, _ = run_updates(trainer, 3)
        assert hook.boss_tokens > 0
        saved = hook.state_dict()
    finally:
        hook.close()
    _, task2, trainer2 = build(tiny_data_bin, tmp_path / "b", "translation_efficiency",
                               extra=SELF_PACED)
    hook2 = task2.hooks.hooks[0]
    try:
        task2.hooks.load_state_dict({"instance_selection": saved})
        assert hook2.worker is None and hook2.boss_tokens == 0  # kept until the iterator exists
        itr = trainer2.get_train_iterator(epoch=1)
        assert hook2.boss_tokens == saved["ranks"][0]["boss_tokens"]
        assert itr.num_batches(1) == saved["ranks"][0]["num_batches"][1]
        assert hook2.restored_from == "-"  # a selector without an Assistant
    finally:
        hook2.close()


def test_only_training_batches_are_reported(tiny_data_bin, tmp_path):
    _, task, trainer = build(tiny_data_bin, tmp_path, "translation_efficiency", extra=SELF_PACED)
    hook = task.hooks.hooks[0]
    try:
        run_updates(trainer, 1)
        with metrics.aggregate(new_root=True) as valid:
            hook.reduce_metrics([], train=False)
        with metrics.aggregate(new_root=True) as train:
            hook.reduce_metrics([], train=True)
        assert "keep_rate" not in valid.get_smoothed_values()
        logged = train.get_smoothed_values()
        assert logged["boss_tok"] == hook.boss_tokens > 0 and 0 <= logged["keep_rate"] <= 1
    finally:
        hook.close()
