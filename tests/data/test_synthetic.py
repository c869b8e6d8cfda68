"""The embedded corpus: determinism, statistics, instance classes, errors."""
import collections
import filecmp
import os

import numpy as np
import pytest

from fairseq_efficiency.data import synthetic
from fairseq_efficiency.data.synthetic import CorpusConfig, generate, write_corpus

SMALL = dict(train_size=3000, valid_size=50, test_size=50)


def pairs_of(cfg, split="train"):
    for name, pairs, kinds in generate(cfg):
        if name == split:
            return pairs, kinds


def test_same_seed_same_files_other_seed_differs(tmp_path):
    write_corpus(CorpusConfig(seed=5, **SMALL), tmp_path / "a")
    write_corpus(CorpusConfig(seed=5, **SMALL), tmp_path / "b")
    write_corpus(CorpusConfig(seed=6, **SMALL), tmp_path / "c")
    for f in ("train.src", "train.tgt", "train.kind", "test.tgt"):
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False)
    assert not filecmp.cmp(tmp_path / "a" / "train.src", tmp_path / "c" / "train.src", shallow=False)


def test_splits_do_not_depend_on_other_split_sizes():
    a, _ = pairs_of(CorpusConfig(seed=2, train_size=100, valid_size=20, test_size=20), "test")
    b, _ = pairs_of(CorpusConfig(seed=2, train_size=500, valid_size=50, test_size=20), "test")
    assert a == b


def test_lengths_vocabulary_and_zipf():
    cfg = CorpusConfig(seed=1, **SMALL)
    pairs, _ = pairs_of(cfg)
    lens = np.array([len(s) for s, _ in pairs] + [len(t) for _, t in pairs])
    assert lens.min() >= cfg.min_len and lens.max() <= cfg.max_len
    assert lens.max() >= 30 and np.mean(lens) > 8  # long sentences exist, not only short ones
    counts = collections.Counter(w for s, _ in pairs for w in s)
    assert len(counts) > 2000  # several thousand types even in 3k pairs
    # Zipf: log-frequency falls roughly linearly with log-rank, slope near -1
    freq = np.array(sorted(counts.values(), reverse=True), dtype=float)
    ranks = np.arange(1, len(freq) + 1)
    sel = slice(10, 1000)
    slope = np.polyfit(np.log(ranks[sel]), np.log(freq[sel]), 1)[0]
    assert -2.0 < slope < -0.6
    assert sum(c == 1 for c in counts.values()) > 0.2 * len(counts)  # a long tail of rare types


def test_instance_classes_differ_in_difficulty():
    cfg = CorpusConfig(seed=1, easy_frac=0.3, hard_frac=0.3, noise_frac=0.1, **SMALL)
    pairs, kinds = pairs_of(cfg)
    frac = collections.Counter(kinds)
    n = len(kinds)
    assert abs(frac["easy"] / n - 0.3) < 0.04 and abs(frac["hard"] / n - 0.3) < 0.04
    assert abs(frac["noisy"] / n - 0.1) < 0.03
    length = {k: np.mean([len(s) for (s, _), kk in zip(pairs, kinds) if kk == k]) for k in frac}
    assert length["easy"] < length["medium"] < length["hard"]
    # hard pairs use rarer words: mean corpus rank of their words is higher
    counts = collections.Counter(w for s, _ in pairs for w in s)
    rank = {w: r for r, (w, _) in enumerate(counts.most_common())}
    mean_rank = {k: np.mean([rank[w] for (s, _), kk in zip(pairs, kinds) if kk == k for w in s])
                 for k in ("easy", "hard")}
    assert mean_rank["hard"] > 3 * mean_rank["easy"]


def test_translation_rules_reorder_and_agree():
    gen = synthetic._Generator(CorpusConfig(seed=1))
    rng = np.random.default_rng(0)
    lex = gen.lex
    for _ in range(200):
        src, tgt, num = gen.noun_phrase(rng, "zipf", depth=2, allow_adj=True, allow_rel=False)
        # det [adj]* noun  ->  det noun [adj]*, adjectives agree with the noun
        adjs = src[1:-1]
        assert len(tgt) == len(src)
        n_idx = lex.src["N"].index(src[-1][:-1] if num else src[-1])
        g = lex.gender[n_idx]
        assert tgt[1] == lex.tgt["N"][n_idx] + ("en" if num else "")
        for a_src, a_tgt in zip(adjs, tgt[2:]):
            a_idx = lex.src["A"].index(a_src)
            assert a_tgt == lex.tgt["A"][a_idx] + synthetic._TGT_ADJ_SUFFIX[g][num]


def test_noisy_pairs_are_misaligned():
    cfg = CorpusConfig(seed=1, easy_frac=0.0, hard_frac=0.0, noise_frac=1.0, **SMALL)
    clean = CorpusConfig(seed=1, easy_frac=0.0, hard_frac=0.0, noise_frac=0.0, **SMALL)
    noisy_pairs, _ = pairs_of(cfg)
    clean_pairs, _ = pairs_of(clean)
    # a clean target repeats its source's final '.'; garbled/misaligned ones break the
    # source/target length relation far more often
    diff = lambda ps: np.mean([abs(len(s) - len(t)) for s, t in ps])
    assert diff(noisy_pairs) > 2 * diff(clean_pairs)


@pytest.mark.parametrize("argv,msg", [
    (["--train-size", "-1"], "--train-size must be >= 0"),
    (["--easy-frac", "0.7", "--hard-frac", "0.5"], "must be <= 1"),
    (["--min-len", "10", "--max-len", "5"], "--min-len"),
    (["--nouns", "3"], "--nouns must be >= 10"),
])
def test_bad_arguments_one_line_error(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        synthetic.main([str(tmp_path / "out")] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err
    assert not os.path.exists(tmp_path / "out")
