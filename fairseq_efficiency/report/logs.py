"""Reading fairseq ``--log-format json`` training logs into learning curves.

The forms fairseq writes are read: the console form
(``2026-01-01 10:00:00 | INFO | train_inner | {"epoch": 1, ...}``), hydra's
(``[2026-01-01 10:00:00,000][train_inner][INFO] - {...}``) and the bare
``--log-file`` form (``{"epoch": 1, ...}``, record kind told apart by its keys).
Records used (values are strings in fairseq's json, parsed as floats):

- ``train_inner`` (every ``--log-interval`` updates): ``num_updates``, ``wpb``
  (mean target tokens per update since the previous ``train_inner`` record),
  ``wall`` (seconds since the process started) and any technique metric;
- ``train`` (end of epoch): ``train_num_updates``, ``train_wpb`` (mean over the
  epoch), ``train_wall``;
- ``valid``: ``valid_loss`` (base 2, per target token), ``valid_num_updates``.

**Boss tokens** are the target tokens of the batches the optimizer actually
trained on (AutoAssist's Boss; fairseq's ``ntokens``/``wpb``, summed over
``--update-freq``). At each end-of-epoch record the count is exact:
``C(U_e) = C(U_{e-1}) + train_wpb_e * (U_e - U_{e-1})``. Between them each
``train_inner`` record adds ``wpb * (u - u_prev)`` to the previous train record
(the first one of an epoch estimates the part of its window after the epoch
boundary with the window's mean). AutoAssist's own ``boss_tok`` metric counts
source + target tokens and is plotted as a technique curve, not used here.

**Resumed runs** (fairseq appends to ``--log-file``): each process start
(fairseq's config line or its checkpoint-loading line; failing both, updates or
``wall`` going back) opens a segment; records of earlier segments past the
update of the checkpoint it loaded (``Loaded checkpoint ... @ N updates``; 0
when none was loaded) are dropped, and its ``wall`` (which restarts at 0 in each
process) continues from the last kept record, so time spent on updates that
were redone is not counted.
"""
import json
import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Union

# technique metrics (logged by the plugin's hooks through fairseq.logging.metrics) and labels
TECHNIQUE_METRICS = {
    "keep_rate": "AutoAssist keep rate",
    "rho": "AutoAssist confidence ρ",
    "T": "AutoAssist loss threshold T",
    "assistant_acc": "Assistant accuracy",
    "sparsity": "pruning sparsity",
    "mesimp_units": "meSimp hidden units",
    "pipe_wait_ms": "hybrid pipe_wait_ms",
    "spl_pace": "self-paced pace",
    "ds_expected_keep": "dynamic sampling expected keep",
}

# console: "DATE | INFO | train_inner | {...}"; hydra: "[DATE][train_inner][INFO] - {...}";
# --log-file: "{...}"
_JSON = re.compile(r'^(?:.*? \| ([\w.-]+) \| |\[[^\]]*\]\[([\w.-]+)\]\[\w+\] - )?(\{".*\})\s*$')
_CONFIG = re.compile(r"^(?:.*? \| )?(\{'_name': .*\})\s*$")
_SAVE_DIR = re.compile(r"'checkpoint': \{[^{}]*?'save_dir': '([^']*)'")
_START = re.compile(r"'checkpoint': \{[^{}]*?'restore_file': '([^']*)'[^{}]*?"
                    r"'finetune_from_model': (?:'([^']*)'|None)")
_LOADED = re.compile(r"Loaded checkpoint .* \(epoch \d+ @ (\d+) updates\)|(No existing checkpoint found)")
MAX_LINE = 1 << 20  # longer lines are not fairseq records


class LogError(Exception):
    """A one-line error about a log the report cannot read."""


@dataclass
class TrainPoint:
    updates: float
    tokens: float  # cumulative Boss tokens (see module docstring)
    wall: float  # cumulative seconds
    metrics: Dict[str, float] = field(default_factory=dict)
    epoch_end: bool = False


@dataclass
class ValidPoint:
    updates: float
    loss: float
    epoch: Optional[int] = None


@dataclass
class Curves:
    """What one training log says, in update order."""

    train: List[TrainPoint] = field(default_factory=list)
    valid: List[ValidPoint] = field(default_factory=list)
    save_dir: Optional[str] = None  # --save-dir, from fairseq's config line
    # another run's checkpoint this run started from (--finetune-from-model, --restore-file)
    started_from: Optional[str] = None
    segments: int = 0

    # -- cumulative counts at any update ------------------------------------------------------
    def _at(self, updates, attr):
        pts = [(0.0, 0.0)] + [(p.updates, getattr(p, attr)) for p in self.train]
        if len(pts) == 1:
            return None
        for (u0, y0), (u1, y1) in zip(pts, pts[1:]):
            if u0 <= updates <= u1:
                return y0 if u1 == u0 else y0 + (y1 - y0) * (updates - u0) / (u1 - u0)
        u_last, y_last = pts[-1]
        if updates > u_last and u_last > 0:  # past the last train record: the run's mean rate
            return y_last * updates / u_last
        return None

    def tokens_at(self, updates):
        """Boss tokens after ``updates`` updates (linear between train records)."""
        return self._at(updates, "tokens")

    def wall_at(self, updates):
        """Wall seconds after ``updates`` updates (linear between train records)."""
        return self._at(updates, "wall")

    @property
    def updates(self):
        return max([p.updates for p in self.train] + [p.updates for p in self.valid] + [0])


def _num(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _kind(tag, rec, subset):
    if tag in ("train_inner", "train") or tag == subset:
        return tag if tag != subset else "valid"
    if tag is not None:
        return None  # another subset or another tool's json
    if f"{subset}_loss" in rec and f"{subset}_num_updates" in rec:
        return "valid"
    if "train_loss" in rec and "train_num_updates" in rec:
        return "train"
    if "loss" in rec and "num_updates" in rec and "wpb" in rec:
        return "train_inner"
    return None


def parse_log(text: Union[str, Iterable[str]], subset: str = "valid") -> Curves:
    """Curves of a fairseq json log, given as text or lines (``subset``: the validation
    subset reported)."""
    curves = Curves(segments=1)
    train: List[TrainPoint] = []
    valid: List[ValidPoint] = []
    new_segment, loaded_at = True, 0.0
    wall_offset = 0.0
    last_raw_wall = None
    epoch_anchor = (0.0, 0.0)  # (updates, tokens) at the last end-of-epoch record
    for line in (text.splitlines() if isinstance(text, str) else text):
        if len(line) > MAX_LINE:
            continue
        m = _CONFIG.match(line)
        if m:
            curves.segments += not new_segment
            new_segment, loaded_at = True, 0.0
            sd = _SAVE_DIR.search(m.group(1))
            curves.save_dir = sd.group(1) if sd else None
            st = _START.search(m.group(1))
            if st and curves.segments == 1:  # the first process decides where the run began
                restore, finetune = st.groups()
                curves.started_from = finetune or (
                    restore if restore != "checkpoint_last.pt" else None)
            continue
        m = _LOADED.search(line)
        if m:  # a process start without a config line (e.g. hydra's log format)
            curves.segments += not new_segment
            new_segment, loaded_at = True, float(m.group(1) or 0)
            continue
        m = _JSON.match(line)
        if not m:
            continue
        try:
            rec = json.loads(m.group(3))
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        kind = _kind(m.group(1) or m.group(2), rec, subset)
        if kind is None:
            continue
        prefix = {"train_inner": "", "train": "train_", "valid": subset + "_"}[kind]
        u = _num(rec.get(prefix + "num_updates"))
        if u is None:
            continue
        raw_wall = _num(rec.get(prefix + "wall")) if kind != "valid" else None
        # a restart without a config line (e.g. a log of json lines only): updates went back
        last_u = train[-1].updates if train else -1.0
        if not new_segment and kind != "valid" and (
                u < last_u or (raw_wall is not None and last_raw_wall is not None
                               and raw_wall < last_raw_wall)):
            new_segment, loaded_at = True, max([p.updates for p in train if p.updates < u] + [0.0])
            curves.segments += 1
        if new_segment:
            train = [p for p in train if p.updates <= loaded_at]
            valid = [p for p in valid if p.updates <= loaded_at]
            wall_offset = train[-1].wall if train else 0.0
            anchors = [p for p in train if p.epoch_end]
            epoch_anchor = (anchors[-1].updates, anchors[-1].tokens) if anchors else (0.0, 0.0)
            last_raw_wall = None
            new_segment = False
        if kind == "valid":
            loss = _num(rec.get(prefix + "loss"))
            if loss is not None:
                epoch = _num(rec.get("epoch"))
                valid.append(ValidPoint(u, loss, int(epoch) if epoch is not None else None))
            continue
        wpb = _num(rec.get(prefix + "wpb"))
        if wpb is None:
            continue
        prev_u, prev_tok = (train[-1].updates, train[-1].tokens) if train else (0.0, 0.0)
        if kind == "train":
            start_u, start_tok = epoch_anchor
            tokens = start_tok + wpb * max(u - start_u, 0.0)
        else:
            tokens = prev_tok + wpb * max(u - prev_u, 0.0)
        if raw_wall is not None:
            last_raw_wall = raw_wall
            wall = wall_offset + raw_wall
        else:
            wall = train[-1].wall if train else wall_offset
        metrics = {}
        for key in TECHNIQUE_METRICS:
            v = _num(rec.get(prefix + key))
            if v is not None:
                metrics[key] = v
        if kind == "train":
            epoch_anchor = (u, tokens)
            # the epoch record repeats the last inner record's update: replace, not duplicate
            if train and train[-1].updates == u:
                train.pop()
        elif train and train[-1].updates == u:
            continue
        train.append(TrainPoint(u, tokens, wall, metrics, epoch_end=kind == "train"))
    curves.train, curves.valid = train, valid
    return curves


def _lines(f):
    """The lines of ``f`` without newlines; lines longer than ``MAX_LINE`` are skipped
    without being held in memory."""
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith("\n"):
            while True:  # the rest of an overlong line
                rest = f.readline(MAX_LINE + 1)
                if not rest or rest.endswith("\n"):
                    break
            continue
        yield line.rstrip("\r\n")


def read_log(path: str, subset: str = "valid") -> Curves:
    """:func:`parse_log` of a file; :class:`LogError` when it holds no fairseq json record."""
    try:
        with open(path, "rb") as f:
            if b"\0" in f.read(4096):
                raise LogError(f"{path} is not a text log")
        with open(path, encoding="utf-8", errors="replace") as f:
            curves = parse_log(_lines(f), subset)
    except OSError as e:
        raise LogError(f"cannot read {path}: {e.strerror or e}") from None
    if not curves.train and not curves.valid:
        raise LogError(f"{path} has no fairseq json log records (train with --log-format json)")
    return curves


_BLEU = re.compile(r"Generate (\S+) with beam=\d+: BLEU4? = ([\d.]+)")


def parse_bleu(text: str, subset: str = "test") -> Optional[float]:
    """The BLEU of the last ``fairseq-generate`` score line for ``subset`` (``None``: none)."""
    found = [float(m.group(2)) for m in _BLEU.finditer(text) if m.group(1) == subset]
    return found[-1] if found else None
