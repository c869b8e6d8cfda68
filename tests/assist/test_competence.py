"""Competence-based curriculum (Platanios et al., 2019): schedule, difficulty scores,
batches restricted to the competent subset, resume, and fairseq-train end to end."""
import math
import os
import re

import numpy as np
import pytest
import torch

from fairseq_efficiency.assist.competence import (CompetenceSelector, competence,
                                                  difficulty_cdf, length_difficulty,
                                                  rarity_difficulty)
from fairseq_efficiency.assist.bucketing import BucketBatcher, LengthBucketStream
from fairseq_efficiency.assist.worker import AssistWorker
from tests.helpers import fairseq_best_state, run_cli, train_args


def test_competence_schedule_values():
    # c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2)), worked by hand
    assert competence(0, 100) == pytest.approx(0.01)
    assert competence(25, 100) == pytest.approx(math.sqrt(0.250075))  # 25*0.9999/100 + 1e-4
    assert competence(25, 100) == pytest.approx(0.5000750, abs=1e-7)
    assert competence(100, 100) == 1.0 and competence(250, 100) == 1.0
    assert competence(1, 10, c0=0.1) == pytest.approx(0.3301515, abs=1e-7)  # sqrt(0.109)
    assert competence(5, 10, c0=0.1) == pytest.approx(0.7106335, abs=1e-7)  # sqrt(0.505)
    with pytest.raises(ValueError, match="T must be > 0"):
        competence(1, 0)


def test_length_and_rarity_cdf_on_a_hand_made_corpus():
    # lengths 3 1 2 2 5 -> shares of strictly shorter sentences
    np.testing.assert_allclose(difficulty_cdf(length_difficulty([3, 1, 2, 2, 5])),
                               [0.6, 0.0, 0.2, 0.2, 0.8])
    # ids 0, 1 are special (1 = </s>); unigrams 2: 3/5, 3: 1/5, 4: 1/5
    tokens = np.array([2, 2, 1, 2, 3, 1, 4, 1])
    d = rarity_difficulty(tokens, [3, 3, 2], nspecial=2)
    np.testing.assert_allclose(d, [-2 * math.log(0.6), -math.log(0.6) - math.log(0.2),
                                   -math.log(0.2)])
    np.testing.assert_allclose(difficulty_cdf(d), [0.0, 2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="lengths sum"):
        rarity_difficulty(tokens, [3, 3], nspecial=2)


def make_worker(selector, sizes, max_tokens=200):
    n = len(sizes)
    stream = LengthBucketStream(np.arange(n), n, sizes, sizes, sizes, max_tokens, None,
                                np.random.default_rng(0), group_batches=4)
    return AssistWorker(selector, stream, BucketBatcher(stream), collate=lambda b: {"id": b},
                        ntokens=2 * sizes, rng=np.random.default_rng(1), queue_size=4, chunk=64)


def test_batches_at_update_t_hold_only_competent_sentences():
    sizes = np.random.default_rng(5).integers(3, 30, 3000)
    scores = difficulty_cdf(length_difficulty(sizes))
    sel = CompetenceSelector(scores, steps=100)
    w = make_worker(sel, sizes)
    try:
        seen_max, first = [], None
        for t in (0, 5, 20, 50, 100):
            sel.set_update(t)
            k = 15 if t < 100 else 2 * w.batcher.batches_per_pass()  # then a pass or more
            drawn = np.concatenate([w.next_batch()[0] for _ in range(k)])
            first = drawn if first is None else first
            # batches made earlier (lower competence) may still be queued: never harder
            assert scores[drawn].max() <= competence(t, 100)
            seen_max.append(scores[drawn].max())
        assert seen_max[0] == 0.0 and np.all(sizes[first] == 3)  # the shortest first
        assert seen_max[-1] == scores.max()  # full competence: the hardest are trained too
        assert np.all(np.diff(seen_max) >= 0)
    finally:
        w.close()


def test_state_round_trip_continues_the_schedule():
    scores = difficulty_cdf(np.arange(100))
    sel = CompetenceSelector(scores, steps=50, c0=0.1)
    sel.set_update(12)
    sel.set_update(3)  # an out-of-order report never lowers the competence
    st = sel.state_dict()
    fresh = CompetenceSelector(scores, steps=50, c0=0.1)
    assert fresh.competence == pytest.approx(0.1)
    fresh.load_state_dict(st)
    assert fresh.update == 12 and fresh.competence == pytest.approx(competence(12, 50, 0.1))
    np.testing.assert_array_equal(fresh.keep_prob(np.arange(100)), sel.keep_prob(np.arange(100)))
    fresh.set_update(13)
    assert fresh.competence > sel.competence


def logged_competence(log):
    """{num_updates: competence} from fairseq's per-update train_inner lines."""
    out = {}
    for line in log.splitlines():
        if "| train_inner |" in line:
            f = dict(re.findall(r"(\w+)=([\d.e+-]+)", line.split("| train_inner |")[1]))
            out[int(f["num_updates"])] = float(f["competence"])
    return out


@pytest.mark.parametrize("difficulty", ["length", "rarity"])
def test_fairseq_train_with_competence_and_resume(tiny_data_bin, tmp_path, difficulty):
    save = str(tmp_path / "ck")
    # any criterion: the curriculum needs no per-sentence loss
    args = ["--task", "translation_efficiency", "--instance-selection", "competence",
            "--competence-difficulty", difficulty, "--competence-steps", "20",
            "--no-epoch-checkpoints"]
    res = run_cli("fairseq_cli.train", train_args(tiny_data_bin, save, *args, "--max-update", "4"))
    first = logged_competence(res.stdout + res.stderr)
    # logged after update k, whose number (0-based) was k - 1
    assert first == {k: pytest.approx(competence(k - 1, 20), abs=1e-3) for k in range(1, 5)}
    cp = torch.load(os.path.join(save, "checkpoint_last.pt"), map_location="cpu",
                    weights_only=False)
    st = cp["extra_state"]["TranslationEfficiencyTask"]["hooks"]["instance_selection"]
    assert st["selection"] == "competence"
    assert st["ranks"][0]["worker"]["selector"]["update"] == 3
    if difficulty == "rarity":
        return  # the difficulty only changes the scores; resume is checked once
    res = run_cli("fairseq_cli.train", train_args(tiny_data_bin, save, *args, "--max-update", "7"))
    log = res.stdout + res.stderr
    assert "restored worker 0 state" in log
    second = logged_competence(log)
    assert second == {k: pytest.approx(competence(k - 1, 20), abs=1e-3) for k in range(5, 8)}


def test_invalid_competence_options_are_rejected():
    from dataclasses import asdict
    from types import SimpleNamespace

    from fairseq_efficiency.assist.config import AutoAssistConfig, validate

    cfg = SimpleNamespace(**asdict(AutoAssistConfig()))
    cfg.instance_selection = "competence"
    assert validate(cfg) == "competence"
    for name, bad, msg in [("competence_steps", 0, "--competence-steps must be >= 1, got 0"),
                           ("competence_c0", 0.0, "--competence-c0 must be in (0, 1], got 0.0")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            validate(SimpleNamespace(**{**vars(cfg), name: bad}))


def test_best_checkpoint_and_patience_count_from_the_end_of_the_curriculum():
    """While c(t) < 1 every validation restarts fairseq's best-loss tracking; after, never."""
    from types import SimpleNamespace

    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.options import get_training_parser, parse_args_and_arch

    from fairseq_efficiency.assist.hook import InstanceSelectionHook

    with fairseq_best_state() as (save, stop):
        parser = get_training_parser()
        args = parse_args_and_arch(parser, ["data", "--task", "translation_efficiency",
                                            "--arch", "lstm", "--instance-selection",
                                            "competence", "--competence-steps", "10"])
        hook = InstanceSelectionHook(convert_namespace_to_omegaconf(args).task, "competence")
        selector = CompetenceSelector(np.zeros(4), steps=10)
        hook.worker = SimpleNamespace(selector=selector)
        for update, forgotten in ((3, True), (9, True), (10, False), (25, False)):
            save.best, stop.best, stop.num_runs = 0.5, 0.5, 2
            selector.set_update(update)
            hook.on_valid_epoch_start(1, None)
            assert hasattr(save, "best") != forgotten, update
            assert hasattr(stop, "best") != forgotten and hasattr(stop, "num_runs") != forgotten
