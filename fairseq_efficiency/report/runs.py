"""Finding runs (save directories, log files, globs), naming them and grouping them into methods.

A directory holding ``train.log`` is one run named after the directory; any other
directory contributes each of its ``*.log`` files with fairseq json records as a
run named after the file, or, when it has none, each sub-directory that is a run
(so ``OUT/`` of the comparison runner reads every ``OUT/NAME.seedN``). A run
named ``NAME.seedN`` (also ``-seedN``/``_seedN``) belongs to method ``NAME``,
seed ``N``; ``--group METHOD=PATTERN`` puts runs whose name matches the shell
pattern into ``METHOD`` instead.
"""
import fnmatch
import glob
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_efficiency.report.logs import Curves, LogError, parse_bleu, read_log

logger = logging.getLogger(__name__)

_SEED = re.compile(r"^(?P<method>.+?)[._-]seed(?P<seed>\d+)$")
_LOG_SUFFIXES = (".train.log", ".log", ".txt", ".json")
TAIL_BYTES = 1 << 16  # fairseq-generate prints its score on the last line


@dataclass
class Run:
    name: str
    log: str
    curves: Curves
    directory: str  # where the run's checkpoints and generate output are looked for
    method: str = ""
    seed: Optional[int] = None
    bleu: Optional[float] = None
    params: Optional[int] = None
    nonzero_params: Optional[int] = None
    checkpoint: Optional[str] = None
    extra: Dict[str, object] = field(default_factory=dict)


def _stem(path):
    base = os.path.basename(path)
    for suf in _LOG_SUFFIXES:
        if base.endswith(suf) and len(base) > len(suf):
            base = base[: -len(suf)]
            break
    if base == "train":  # DIR/train.log
        base = os.path.basename(os.path.dirname(os.path.abspath(path))) or base
    return base


def _dir_logs(d, subset="valid") -> List[Tuple[str, str, Curves]]:
    """(name, log path, curves) of the runs a directory holds (none: empty list)."""
    main = os.path.join(d, "train.log")
    if os.path.isfile(main):
        return [(os.path.basename(os.path.abspath(d)), main, read_log(main, subset))]
    found = []
    for f in sorted(os.listdir(d)):
        p = os.path.join(d, f)
        if f.endswith(".log") and os.path.isfile(p):
            try:
                found.append((_stem(p), p, read_log(p, subset)))
            except LogError:
                continue  # generate logs and the like
    return found


def discover(paths: Sequence[str], subset: str = "valid") -> List[Run]:
    """Runs named by ``paths`` (directories, log files or glob patterns), in argument order."""
    runs: List[Run] = []
    for arg in paths:
        if os.path.exists(arg):
            targets = [arg]
        else:
            targets = sorted(glob.glob(arg))
            if not targets:
                raise LogError(f"{arg}: no such file or directory")
        for path in targets:
            if os.path.isdir(path):
                logs = _dir_logs(path, subset)
                if logs:
                    runs += [Run(n, p, c, path) for n, p, c in logs]
                    continue
                subs = [os.path.join(path, s) for s in sorted(os.listdir(path))]
                for sub in subs:
                    if os.path.isdir(sub):
                        try:
                            runs += [Run(n, p, c, sub) for n, p, c in _dir_logs(sub, subset)]
                        except LogError as e:  # e.g. a run that has not logged yet
                            logger.warning("skipped: %s", e)
                if not any(r.log.startswith(os.path.join(path, "")) for r in runs):
                    raise LogError(f"{path}: no fairseq json training log in it "
                                   "(train.log or *.log, written with --log-format json)")
            else:
                runs.append(Run(_stem(path), path, read_log(path, subset),
                                os.path.dirname(os.path.abspath(path))))
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LogError(f"two runs are named {dup[0]}: give each run its own directory or file name")
    return runs


def assign_methods(runs: List[Run], groups: Sequence[str] = ()) -> Dict[str, List[Run]]:
    """Method of every run; ``groups``: ``METHOD=PATTERN`` strings (shell patterns on names)."""
    rules = []
    for g in groups:
        method, sep, pattern = g.partition("=")
        if not sep or not method or not pattern:
            raise LogError(f"--group {g!r}: expected METHOD=PATTERN, e.g. baseline='base*'")
        rules.append((method, pattern))
    methods: Dict[str, List[Run]] = {}
    for r in runs:
        m = _SEED.match(r.name)
        r.method, r.seed = (m.group("method"), int(m.group("seed"))) if m else (r.name, None)
        for method, pattern in rules:
            if fnmatch.fnmatchcase(r.name, pattern):
                r.method = method
                break
        methods.setdefault(r.method, []).append(r)
    return methods


def _tail(path):
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")


def _save_dir(run: Run) -> Optional[str]:
    save = run.curves.save_dir
    if save:
        for cand in (save, os.path.join(os.path.dirname(run.log), save)):
            if os.path.isdir(cand):
                return cand
    return None


def find_bleu(run: Run, subset: str = "test") -> Optional[float]:
    """BLEU from ``fairseq-generate`` output beside the run: ``generate-SUBSET.txt``
    (``--results-path``), ``*.gen`` or ``*generate*.log`` in its directory, or ``STEM.gen`` /
    ``STEM.generate*`` next to a log file."""
    dirs = [run.directory] + [d for d in [_save_dir(run)] if d]
    cands = []
    own_dir = os.path.basename(os.path.normpath(run.directory)) == run.name
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if own_dir or d != run.directory:
                ok = f == f"generate-{subset}.txt" or f.endswith(".gen") or (
                    "generate" in f and f.endswith(".log"))
            else:  # a directory of several runs' logs: only files named after this run
                ok = f.startswith(run.name + ".") and (f.endswith(".gen") or "generate" in f)
            if ok and os.path.isfile(os.path.join(d, f)):
                cands.append(os.path.join(d, f))
    for path in cands:
        bleu = parse_bleu(_tail(path), subset)
        if bleu is not None:
            return bleu
    return None


def count_parameters(path: str) -> Tuple[int, int]:
    """``(parameters, non-zero parameters)`` of a fairseq checkpoint's model (weights-only load)."""
    import torch

    from fairseq_efficiency import compat

    compat.install()
    try:
        try:  # memory-mapped: a large checkpoint is not read into memory to count its zeros
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, TypeError) as e:  # legacy-format files; torch < 2.1
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (unpickling errors of all kinds)
        raise LogError(f"cannot read checkpoint {path}: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from None
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict):
        raise LogError(f"{path} is not a fairseq checkpoint (no model weights)")
    total = nonzero = 0
    for t in model.values():
        if torch.is_tensor(t) and t.is_floating_point():
            total += t.numel()
            nonzero += int(torch.count_nonzero(t))
    return total, nonzero


def find_checkpoint(run: Run) -> Optional[str]:
    own_dir = os.path.basename(os.path.normpath(run.directory)) == run.name
    for d in ([run.directory] if own_dir else []) + [d for d in [_save_dir(run)] if d]:
        for f in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if os.path.isfile(os.path.join(d, f)):
                return os.path.join(d, f)
    return None


def load_extras(run: Run, bleu_subset: str = "test", checkpoints: bool = True):
    """Fill in BLEU and parameter counts where their files exist (a warning when unreadable)."""
    run.bleu = find_bleu(run, bleu_subset)
    if checkpoints:
        run.checkpoint = find_checkpoint(run)
        if run.checkpoint:
            try:
                run.params, run.nonzero_params = count_parameters(run.checkpoint)
            except LogError as e:
                logger.warning("%s", e)
