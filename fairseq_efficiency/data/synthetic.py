"""Embedded synthetic parallel corpus: a seeded, rule-based "language pair".

The corpus is built so that instance difficulty varies the way it does in real
parallel text, which is what AutoAssist, pruning and meProp are measured on:

* Zipfian lexicon: several thousand source lemmas in open classes (nouns, verbs,
  adjectives, adverbs) plus closed-class function words; lemma frequency
  follows a Zipf law, so most types are rare.
* Target side ("translation"):
  - a bijective lexicon source lemma -> target lemma (different surface forms);
  - agreement morphology: every target noun has a gender; determiners and
    adjectives agree with their noun in gender and number, verbs agree with
    their subject's number;
  - local reordering: adjectives follow their noun (``A N -> N A``);
  - long-distance reordering and dependencies: in relative clauses the verb
    moves to the clause end (``that V O -> that O V``) and the main verb still
    agrees with a subject that may be many tokens away.
* Instance classes, mixed by fractions:
  - ``easy``: short, monotone (no adjectives or relative clauses), frequent
    words only;
  - ``medium``: the full grammar with the natural Zipf distribution;
  - ``hard``: long sentences, nested relative clauses, rare words;
  - ``noisy``: misaligned pairs (the target of another sentence) or targets
    with a block of shuffled/dropped words.

Every split is a deterministic function of ``(seed, split name, sizes)``.
Besides ``{split}.{src,tgt}`` the generator writes ``{split}.kind`` (the class
of every line) so the effect of instance selection can be analysed.
"""
import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("easy", "medium", "hard", "noisy")
SPLITS = ("train", "valid", "test")
_SPLIT_OFFSETS = {"train": 0, "valid": 1, "test": 2}

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gl", "kr", "pl", "st", "tr", "sk", "ch", "sh", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "k", "m", "t"]


@dataclass
class CorpusConfig:
    """Knobs of the generator (all have defaults suitable for a 2-core CPU)."""

    seed: int = 1
    train_size: int = 50000
    valid_size: int = 1000
    test_size: int = 1000
    nouns: int = 2400
    verbs: int = 1200
    adjectives: int = 1000
    adverbs: int = 400
    zipf_exponent: float = 1.1
    easy_frac: float = 0.3
    hard_frac: float = 0.2
    noise_frac: float = 0.05
    min_len: int = 3
    max_len: int = 50

    def validate(self):
        for name in ("train_size", "valid_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("nouns", "verbs", "adjectives", "adverbs"):
            if getattr(self, name) < 10:
                raise ValueError(f"--{name} must be >= 10, got {getattr(self, name)}")
        for name in ("easy_frac", "hard_frac", "noise_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
        if self.easy_frac + self.hard_frac + self.noise_frac > 1.0 + 1e-9:
            raise ValueError(
                "--easy-frac + --hard-frac + --noise-frac must be <= 1 "
                f"(got {self.easy_frac + self.hard_frac + self.noise_frac:g})"
            )
        if self.zipf_exponent <= 0:
            raise ValueError(f"--zipf-exponent must be > 0, got {self.zipf_exponent}")
        if not 3 <= self.min_len <= self.max_len:
            raise ValueError(f"need 3 <= --min-len <= --max-len, got {self.min_len}, {self.max_len}")


class _Lexicon:
    """Source/target lemma tables with Zipfian sampling per word class."""

    def __init__(self, cfg: CorpusConfig, rng: np.random.Generator):
        sizes = {"N": cfg.nouns, "V": cfg.verbs, "A": cfg.adjectives, "R": cfg.adverbs}
        total = sum(sizes.values())
        src_words = _pseudo_words(rng, total, used=set())
        tgt_words = _pseudo_words(rng, total, used=set(src_words))
        self.src, self.tgt, self.cdf, self.gender = {}, {}, {}, None
        start = 0
        for cls, n in sizes.items():
            self.src[cls] = src_words[start:start + n]
            self.tgt[cls] = tgt_words[start:start + n]
            p = 1.0 / np.arange(1, n + 1) ** cfg.zipf_exponent
            self.cdf[cls] = np.cumsum(p / p.sum())
            start += n
        self.gender = rng.integers(0, 3, size=sizes["N"])  # 3 target genders

    def sample(self, rng, cls, band):
        """Index of a lemma; ``band`` restricts to 'frequent' or 'rare' lemmas."""
        n = len(self.src[cls])
        if band == "frequent":
            return int(rng.integers(0, max(10, n // 20)))
        if band == "rare":
            return int(rng.integers(n // 4, n))
        return int(min(np.searchsorted(self.cdf[cls], rng.random()), n - 1))


def _pseudo_words(rng, n, used):
    words = []
    seen = set(used)
    while len(words) < n:
        syl = int(rng.integers(2, 4))
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(syl)
        )
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


# Closed-class words. Target determiners/adjective suffixes depend on (gender, number).
_SRC_DET = {"def": "the", "indef": "a", "dem": "this"}
_TGT_DET = {
    "def": [["le", "les"], ["la", "las"], ["lo", "los"]],
    "indef": [["un", "uns"], ["una", "unas"], ["uno", "unos"]],
    "dem": [["ce", "ces"], ["cette", "cettes"], ["cet", "cets"]],
}
_TGT_ADJ_SUFFIX = [["", "i"], ["a", "ai"], ["o", "oi"]]
_SRC_PREP = ["in", "on", "with", "from", "to", "under"]
_TGT_PREP = ["dans", "sur", "avec", "de", "vers", "sous"]


class _Generator:
    def __init__(self, cfg: CorpusConfig):
        self.cfg = cfg
        self.lex = _Lexicon(cfg, np.random.default_rng([cfg.seed, 7919]))

    # -- phrase builders: each returns (src_tokens, tgt_tokens, number) --------
    def noun_phrase(self, rng, band, depth, allow_adj, allow_rel):
        lex = self.lex
        n = lex.sample(rng, "N", band)
        num = int(rng.random() < 0.35)  # 0 singular, 1 plural
        g = int(lex.gender[n])
        det = ("def", "indef", "dem")[int(rng.integers(3))]
        if num == 1 and det == "indef":
            det = "def"
        src = [_SRC_DET[det]]
        tgt = [_TGT_DET[det][g][num]]
        adjs = []
        if allow_adj:
            for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
                adjs.append(lex.sample(rng, "A", band))
        src += [lex.src["A"][a] for a in adjs]
        src.append(lex.src["N"][n] + ("s" if num else ""))
        # local reordering: target adjectives follow the noun and agree with it
        tgt.append(lex.tgt["N"][n] + ("en" if num else ""))
        tgt += [lex.tgt["A"][a] + _TGT_ADJ_SUFFIX[g][num] for a in adjs]
        if allow_rel and depth < 2 and rng.random() < 0.45:
            # relative clause: "that V NP" -> "que NP V" (verb-final, agrees with head)
            v = lex.sample(rng, "V", band)
            obj_s, obj_t, _ = self.noun_phrase(rng, band, depth + 1, allow_adj, allow_rel)
            src += ["that", lex.src["V"][v] + ("" if num else "s")] + obj_s
            tgt += ["que"] + obj_t + [lex.tgt["V"][v] + ("ent" if num else "e")]
        if allow_adj and depth < 2 and rng.random() < 0.25:
            p = int(rng.integers(len(_SRC_PREP)))
            pp_s, pp_t, _ = self.noun_phrase(rng, band, depth + 1, allow_adj, False)
            src += [_SRC_PREP[p]] + pp_s
            tgt += [_TGT_PREP[p]] + pp_t
        return src, tgt, num

    def clause(self, rng, band, complex_):
        lex = self.lex
        subj_s, subj_t, num = self.noun_phrase(rng, band, 0, complex_, complex_)
        v = lex.sample(rng, "V", band)
        src = subj_s + [lex.src["V"][v] + ("" if num else "s")]
        # long-distance agreement: the verb agrees with the (possibly distant) head
        tgt = subj_t + [lex.tgt["V"][v] + ("ent" if num else "e")]
        if rng.random() < 0.8:
            obj_s, obj_t, _ = self.noun_phrase(rng, band, 0, complex_, complex_)
            src += obj_s
            tgt += obj_t
        if complex_ and rng.random() < 0.3:
            r = lex.sample(rng, "R", band)
            src.append(lex.src["R"][r])
            tgt.insert(len(subj_t) + 1, lex.tgt["R"][r])  # adverb moves after the verb
        return src, tgt

    def pair(self, rng, kind):
        cfg = self.cfg
        for _ in range(100):
            if kind == "easy":
                src, tgt = self.clause(rng, "frequent", complex_=False)
            elif kind == "hard":
                src, tgt = self.clause(rng, "rare", complex_=True)
                while len(src) < 18:
                    s2, t2 = self.clause(rng, "rare", complex_=True)
                    src, tgt = src + ["and"] + s2, tgt + ["et"] + t2
            else:
                src, tgt = self.clause(rng, "zipf", complex_=True)
                if rng.random() < 0.3:
                    s2, t2 = self.clause(rng, "zipf", complex_=True)
                    src, tgt = src + ["and"] + s2, tgt + ["et"] + t2
            if kind == "easy" and len(src) > 12:
                continue
            # +1 for the final full stop
            if cfg.min_len <= len(src) + 1 <= cfg.max_len and cfg.min_len <= len(tgt) + 1 <= cfg.max_len:
                return src + ["."], tgt + ["."]
        # fall back to a short sentence that always fits
        src, tgt = self.clause(rng, "frequent", complex_=False)
        return (src + ["."])[: cfg.max_len], (tgt + ["."])[: cfg.max_len]

    def split(self, name, size):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, _SPLIT_OFFSETS[name], 104729])
        probs = np.array([cfg.easy_frac, 0.0, cfg.hard_frac, cfg.noise_frac])
        probs[1] = max(0.0, 1.0 - probs.sum())
        kinds = rng.choice(len(KINDS), size=size, p=probs / probs.sum())
        pairs, out_kinds = [], []
        for k in kinds:
            kind = KINDS[k]
            if kind == "noisy":
                src, tgt = self.pair(rng, "medium")
                if rng.random() < 0.5:
                    # misaligned: the target of an unrelated sentence
                    _, tgt = self.pair(rng, "medium")
                else:
                    # garbled: a block of the target is shuffled and a word dropped
                    tgt = list(tgt)
                    i = int(rng.integers(0, max(1, len(tgt) - 3)))
                    block = tgt[i:i + 6]
                    rng.shuffle(block)
                    tgt[i:i + 6] = block
                    if len(tgt) > cfg.min_len:
                        del tgt[int(rng.integers(len(tgt)))]
            else:
                src, tgt = self.pair(rng, kind)
            pairs.append((src, tgt))
            out_kinds.append(kind)
        return pairs, out_kinds


def generate(cfg: CorpusConfig):
    """Yield ``(split, pairs, kinds)`` for every split of the corpus."""
    cfg.validate()
    gen = _Generator(cfg)
    for split in SPLITS:
        size = getattr(cfg, f"{split}_size")
        pairs, kinds = gen.split(split, size)
        yield split, pairs, kinds


def write_corpus(cfg: CorpusConfig, out_dir, src_lang="src", tgt_lang="tgt"):
    """Write ``{split}.{src_lang,tgt_lang,kind}`` text files and ``corpus.json``."""
    os.makedirs(out_dir, exist_ok=True)
    stats = {"config": asdict(cfg), "splits": {}}
    for split, pairs, kinds in generate(cfg):
        tmp = {ext: os.path.join(out_dir, f"{split}.{ext}.tmp") for ext in (src_lang, tgt_lang, "kind")}
        with open(tmp[src_lang], "w", encoding="utf-8") as fs, \
                open(tmp[tgt_lang], "w", encoding="utf-8") as ft, \
                open(tmp["kind"], "w", encoding="utf-8") as fk:
            for (src, tgt), kind in zip(pairs, kinds):
                fs.write(" ".join(src) + "\n")
                ft.write(" ".join(tgt) + "\n")
                fk.write(kind + "\n")
        for ext, path in tmp.items():  # atomic: a crash never leaves half a split
            os.replace(path, path[: -len(".tmp")])
        stats["splits"][split] = corpus_stats(pairs, kinds)
    with open(os.path.join(out_dir, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    return stats


def corpus_stats(pairs, kinds):
    """Length, vocabulary and class statistics of a list of pairs."""
    if not pairs:
        return {"pairs": 0}
    src_len = np.array([len(s) for s, _ in pairs])
    tgt_len = np.array([len(t) for _, t in pairs])
    src_types = {w for s, _ in pairs for w in s}
    tgt_types = {w for _, t in pairs for w in t}
    return {
        "pairs": len(pairs),
        "src_len": {"min": int(src_len.min()), "mean": float(src_len.mean()), "max": int(src_len.max())},
        "tgt_len": {"min": int(tgt_len.min()), "mean": float(tgt_len.mean()), "max": int(tgt_len.max())},
        "src_types": len(src_types),
        "tgt_types": len(tgt_types),
        "kinds": {k: kinds.count(k) / len(kinds) for k in KINDS},
    }


def add_args(parser):
    d = CorpusConfig()
    g = parser.add_argument_group("corpus")
    g.add_argument("--seed", type=int, default=d.seed, help="generator seed")
    for split in SPLITS:
        g.add_argument(f"--{split}-size", type=int, default=getattr(d, f"{split}_size"),
                       help=f"number of {split} pairs")
    g.add_argument("--nouns", type=int, default=d.nouns, help="source noun lemmas")
    g.add_argument("--verbs", type=int, default=d.verbs, help="source verb lemmas")
    g.add_argument("--adjectives", type=int, default=d.adjectives, help="source adjective lemmas")
    g.add_argument("--adverbs", type=int, default=d.adverbs, help="source adverb lemmas")
    g.add_argument("--zipf-exponent", type=float, default=d.zipf_exponent, help="Zipf law exponent")
    g.add_argument("--easy-frac", type=float, default=d.easy_frac, help="fraction of easy pairs")
    g.add_argument("--hard-frac", type=float, default=d.hard_frac, help="fraction of hard pairs")
    g.add_argument("--noise-frac", type=float, default=d.noise_frac, help="fraction of noisy pairs")
    g.add_argument("--min-len", type=int, default=d.min_len, help="minimum sentence length")
    g.add_argument("--max-len", type=int, default=d.max_len, help="maximum sentence length")


def config_from_args(args) -> CorpusConfig:
    cfg = CorpusConfig(**{k: getattr(args, k) for k in CorpusConfig.__dataclass_fields__})
    cfg.validate()
    return cfg


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="fairseq-efficiency-corpus",
        description="Generate the embedded synthetic parallel corpus as plain text.",
    )
    parser.add_argument("out_dir", help="output directory for {train,valid,test}.{src,tgt,kind}")
    add_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.exit(2, f"fairseq-efficiency-corpus: error: {e}\n")
    stats = write_corpus(cfg, args.out_dir)
    for split, s in stats["splits"].items():
        if s["pairs"]:
            print(
                f"{split}: {s['pairs']} pairs, src len {s['src_len']['mean']:.1f} "
                f"(types {s['src_types']}), tgt len {s['tgt_len']['mean']:.1f} (types {s['tgt_types']})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
