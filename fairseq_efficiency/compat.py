"""torch/fairseq version shims, installed when the plugin is imported.

Checkpoint loading on torch >= 2.6
----------------------------------
``torch.load`` defaults to ``weights_only=True`` since torch 2.6, and fairseq
0.12 calls it without that argument, so ``fairseq-generate`` and
``fairseq-interactive`` refuse fairseq checkpoints: they pickle a few
non-tensor Python objects (an ``argparse.Namespace`` in older checkpoints,
numpy scalars and dtypes in meters and "best" values). Rather than turning the
guard off (``weights_only=False`` would let a checkpoint run arbitrary code),
the plugin allow-lists exactly those types with
``torch.serialization.add_safe_globals``; anything else still fails loudly.

Data-parallel resume: rank 0 reads the checkpoint file (under the guard above),
turns its config into an omegaconf ``DictConfig`` and sends the whole state to
the other ranks with ``torch.save``/``torch.load`` over the process group
(``fairseq.distributed.utils._broadcast_object_slow``). Those bytes are the
job's own in-memory objects from a peer rank, not a file, so the receiving side
unpickles them with ``weights_only=False``; without that every rank > 0 fails to
resume on torch >= 2.6.

Config values are never evaluated as code
-----------------------------------------
fairseq turns list/bool options into values with Python's ``eval``
(``utils.eval_str_list``, ``eval_bool``, ``eval_str_dict`` and direct
``eval(cfg.adam_betas)``-style calls), and model options come from the
checkpoint when ``fairseq-generate`` builds the model: a checkpoint could run
code. Once the plugin is loaded, those functions (and the module-level ``eval``
of every fairseq module that calls it) accept only literals, plus ``+``/``*``
of literal lists as in fconv's ``"[(512, 3)] * 20"`` (:func:`literal_value`);
and a checkpoint whose config holds an expression that calls something is
refused when it is read, naming the option and the file.

Checkpoint copies and resume
----------------------------
fairseq copies ``checkpoint_N.pt`` to ``checkpoint_best.pt``/``checkpoint_last.pt``
with ``shutil.copyfile``: a kill during that copy leaves a truncated
``checkpoint_last.pt``. With the plugin the copy goes through a temporary file
in the same directory, ``fsync`` and ``os.replace`` (:func:`atomic_copy`), and a
resume that finds an unreadable ``checkpoint_last.pt`` continues from the
newest readable ``checkpoint*.pt`` beside it, with a warning naming both.

Best checkpoint and early stopping after the model changes
----------------------------------------------------------
fairseq keeps the best validation loss so far on two functions
(``checkpoint_utils.save_checkpoint.best`` for ``checkpoint_best.pt`` and
``fairseq_cli.train.should_stop_early.best`` for ``--patience``). After a
pruning event those losses belong to a denser model: ``checkpoint_best.pt``
would keep the unpruned weights and ``--patience`` would stop training before
the pruned model had recovered; during a curriculum they belong to a model
trained on part of the data. :func:`restart_best_tracking` forgets both.

Prefetch threads at exit
------------------------
fairseq's ``BufferedIterator`` collates the next batches on a daemon thread.
A run that stops inside an epoch (``--max-update``, a stop signal) leaves that
thread inside torch's C++ code when the interpreter exits; Python then ends it
with ``pthread_exit`` through a C++ frame that may not unwind, and the process
aborts ("terminate called without an active exception", exit status 134) after
its checkpoints were written. With the plugin, each prefetch thread stops at
its next batch when the interpreter starts to exit, and is joined
(:func:`stop_prefetch_threads`).
"""
import argparse
import ast
import atexit
import collections
import contextlib
import dis
import glob
import io
import logging
import os
import pickle
import queue
import shutil
import sys
import tempfile
import threading
import time
import weakref

import numpy as np
import torch

from fairseq_efficiency.errors import CheckpointError, install_excepthook

logger = logging.getLogger(__name__)

_INSTALLED = False


class UnsafeValueError(CheckpointError):
    """A config string that is not a plain value (it would run code if evaluated)."""


# ---------------------------------------------------------------- literal-only config values

MAX_LITERAL_ITEMS = 1_000_000  # bound on lists built by ``[x] * n``
_SIMPLE = (int, float, complex, str, bytes, bool, type(None))


def _short(text, n=80):
    r = repr(text)
    return r if len(r) <= n else r[:n - 4] + "...'"


def _literal(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, _SIMPLE):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, (int, float, complex)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        a, b = _literal(node.left), _literal(node.right)
        num = (int, float, complex)
        if isinstance(a, num) and isinstance(b, num):
            if isinstance(node.op, ast.Add):
                return a + b
            return a - b if isinstance(node.op, ast.Sub) else a * b
        seqs = (list, tuple, str)
        if isinstance(node.op, ast.Add) and type(a) is type(b) and isinstance(a, seqs):
            if len(a) + len(b) <= MAX_LITERAL_ITEMS:
                return a + b
        if isinstance(node.op, ast.Mult):
            seq, n = (a, b) if isinstance(b, int) else (b, a)
            if isinstance(seq, seqs) and isinstance(n, int) and not isinstance(n, bool) \
                    and len(seq) * max(n, 0) <= MAX_LITERAL_ITEMS:
                return seq * n
    raise ValueError


def literal_value(text, option=None):
    """The value of a config string: a Python literal (``ast.literal_eval``'s grammar)
    or ``+``/``*`` of literals (``"[(512, 3)] * 9 + [(1024, 3)] * 4"``), never code."""
    what = f"{option} " if option else "config value "
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        raise UnsafeValueError(f"{what}{_short(text)} is not a literal value; refusing to "
                               "evaluate it") from None


def literal_list(x, option, type=int):
    """A list-valued option (``"[2,2]"``, ``"2"``, a list or ``None``) parsed with
    ``ast.literal_eval``; anything else is refused naming ``option``."""
    if x is None:
        return None
    if isinstance(x, str):
        try:
            x = ast.literal_eval(x.strip())
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            raise UnsafeValueError(f"{option} must be a list literal such as [2,2], got "
                                   f"{_short(x)}") from None
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    allowed = (int,) if type is int else (int, float, str)
    try:
        if any(isinstance(v, bool) or not isinstance(v, allowed) for v in items):
            raise TypeError
        return [type(v) for v in items]
    except (TypeError, ValueError):
        raise UnsafeValueError(f"{option} must be a list of {type.__name__} values, got "
                               f"{_short(x)}") from None


def eval_str_list(x, type=float):
    """``fairseq.utils.eval_str_list`` without ``eval``."""
    if x is None:
        return None
    if isinstance(x, str):
        x = literal_value(x)
    try:
        return list(map(type, x))
    except TypeError:
        return [type(x)]


def eval_str_dict(x, type=dict):
    """``fairseq.utils.eval_str_dict`` without ``eval``."""
    if x is None:
        return None
    if isinstance(x, str):
        x = literal_value(x)
    return x


def eval_bool(x, default=False):
    """``fairseq.utils.eval_bool`` without ``eval`` (non-strings give ``default``, as there)."""
    if x is None or not isinstance(x, (str, bytes)):
        return default
    return bool(literal_value(x if isinstance(x, str) else x.decode()))


def literal_eval_builtin(source, globals=None, locals=None):
    """Stands in for the builtin ``eval`` inside fairseq modules: literals only."""
    if not isinstance(source, (str, bytes)):
        raise TypeError("eval() arg 1 must be a string")
    return literal_value(source if isinstance(source, str) else source.decode())


_CODE_NODES = (ast.Call, ast.Lambda, ast.NamedExpr, ast.ListComp, ast.SetComp, ast.DictComp,
               ast.GeneratorExp, ast.Await, ast.Yield, ast.YieldFrom)


def looks_like_code(text) -> bool:
    """True when evaluating ``text`` would call something or reach a dunder attribute."""
    if not isinstance(text, str) or not text.strip() or len(text) > 100_000:
        return False
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, _CODE_NODES):
            return True
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return True
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            return True
    return False


def _config_strings(obj, prefix=""):
    """(dotted key, value) of every string in a checkpoint's ``cfg``/``args``."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(obj):
        obj = OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _config_strings(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _config_strings(v, f"{prefix}[{i}]")
    elif isinstance(obj, str):
        yield prefix, obj


def check_checkpoint_config(state, path):
    """Refuse a checkpoint whose ``cfg``/``args`` holds an expression that calls something."""
    if not isinstance(state, dict):
        return
    for section in ("cfg", "args"):
        if state.get(section) is None:
            continue
        for key, text in _config_strings(state[section]):
            if looks_like_code(text):
                raise UnsafeValueError(f"checkpoint {path}: option {key} holds Python code, not a "
                                       f"value: {_short(text)}; refusing to load it")


def _patch_fairseq_eval():
    """Literal-only ``eval_str_list``/``eval_str_dict``/``eval_bool`` and ``eval`` in fairseq."""
    from fairseq import utils as fs_utils

    originals = {name: getattr(fs_utils, name) for name in ("eval_str_list", "eval_str_dict",
                                                            "eval_bool")}
    safe = {"eval_str_list": eval_str_list, "eval_str_dict": eval_str_dict,
            "eval_bool": eval_bool}
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name in ("fairseq", "fairseq_cli") or
                               mod_name.startswith(("fairseq.", "fairseq_cli."))):
            continue
        d = getattr(mod, "__dict__", {})
        for name, orig in originals.items():
            if d.get(name) is orig:  # `from fairseq.utils import eval_str_list` copies too
                setattr(mod, name, safe[name])
        if "eval" not in d and _calls_eval(d):
            mod.eval = literal_eval_builtin


def _loads_global_eval(code) -> bool:
    if "eval" in code.co_names and any(
            i.opname in ("LOAD_GLOBAL", "LOAD_NAME") and i.argval == "eval"
            for i in dis.get_instructions(code)):
        return True
    return any(_loads_global_eval(c) for c in code.co_consts if hasattr(c, "co_names"))


def _calls_eval(namespace) -> bool:
    """Whether a module's functions or class methods refer to the global ``eval``."""
    for obj in list(namespace.values()):
        funcs = [obj] if callable(obj) and hasattr(obj, "__code__") else []
        if isinstance(obj, type):
            for v in vars(obj).values():
                for f in ((v.fget, v.fset) if isinstance(v, property) else
                          (getattr(v, "__func__", v),)):
                    if hasattr(f, "__code__"):
                        funcs.append(f)
        for f in funcs:
            if getattr(f, "__module__", None) != namespace.get("__name__"):
                continue
            if _loads_global_eval(f.__code__):
                return True
    return False


# ---------------------------------------------------------------- atomic copies, resume fallback

def atomic_copy(src, dst):
    """Copy ``src`` to ``dst`` through a temporary file + ``fsync`` + ``os.replace``:
    ``dst`` is at every moment either its old content or the complete copy."""
    d = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=d)
    try:
        with open(src, "rb") as fi, os.fdopen(fd, "wb") as fo:
            shutil.copyfileobj(fi, fo, 1 << 20)
            fo.flush()
            os.fsync(fo.fileno())
        shutil.copymode(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return dst


_RESUMING = []  # save dirs of the fairseq-train resumes in progress


def is_refusal(e) -> bool:
    """A file that was read and refused (a global outside the weights-only allow-list, code
    in the config), as opposed to a file that cannot be read: never fall back past it."""
    return isinstance(e, CheckpointError) or (
        isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e))


def load_error_detail(e) -> str:
    """One line on why ``torch.load`` failed (the weights-only message's last line)."""
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = lines[-1:]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _fallback_candidates(path):
    """The other ``checkpoint*.pt`` files beside ``path`` (same ``--checkpoint-suffix``),
    newest first."""
    d = os.path.dirname(os.path.abspath(path))
    suffix = os.path.basename(path)[len("checkpoint_last"):]  # "{checkpoint_suffix}.pt"
    pattern = os.path.join(glob.escape(d), "checkpoint*" + glob.escape(suffix))
    cands = [p for p in glob.glob(pattern)
             if os.path.abspath(p) != os.path.abspath(path) and os.path.isfile(p)]
    return sorted(cands, key=lambda p: os.path.getmtime(p), reverse=True)


def install_checkpoint_shims():
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    orig_copy = PathManager.copy
    orig_load = checkpoint_utils.load_checkpoint_to_cpu
    orig_resume = checkpoint_utils.load_checkpoint

    def copy(src_path, dst_path, overwrite=False):
        if PathManager.path_requires_pathmanager(src_path) or \
                PathManager.path_requires_pathmanager(dst_path):
            return orig_copy(src_path, dst_path, overwrite=overwrite)
        atomic_copy(src_path, dst_path)
        return True

    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        try:
            state = orig_load(path, arg_overrides, load_on_all_ranks)
        except Exception as e:  # noqa: BLE001
            if is_refusal(e) or not _RESUMING or \
                    not os.path.basename(path).startswith("checkpoint_last"):
                raise
            state = None
            for cand in _fallback_candidates(path):
                try:
                    state = orig_load(cand, arg_overrides, load_on_all_ranks)
                except Exception as e2:  # noqa: BLE001
                    if is_refusal(e2):
                        raise
                    continue
                logger.warning(f"{path} is not a readable checkpoint ({load_error_detail(e)}); "
                               f"resuming from {cand}, the newest readable checkpoint beside it")
                path = cand
                break
            if state is None:
                raise CheckpointError(f"{path} is not a readable checkpoint "
                                      f"({load_error_detail(e)}) and no other checkpoint*.pt "
                                      "beside it is readable") from None
        check_checkpoint_config(state, path)
        return state

    def load_checkpoint(cfg, trainer, **passthrough_args):
        _RESUMING.append(cfg.save_dir)
        try:
            return orig_resume(cfg, trainer, **passthrough_args)
        finally:
            _RESUMING.pop()

    PathManager.copy = staticmethod(copy)
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    checkpoint_utils.load_checkpoint = load_checkpoint


def checkpoint_safe_globals():
    """The non-tensor types found in fairseq (and plugin) checkpoints."""
    types = [
        argparse.Namespace,
        collections.OrderedDict,
        collections.defaultdict,
        np.dtype,
        np.ndarray,
    ]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
        types += [scalar, _reconstruct]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
        types += [scalar, _reconstruct]
    # numpy >= 1.25 pickles dtypes by their concrete class (np.dtypes.Float64DType, ...)
    if hasattr(np, "dtypes"):
        types += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [t for t in types if t is not None]


def _broadcast_object_slow(obj, src_rank, group, dist_device):
    """fairseq's object broadcast; receivers unpickle the peer's bytes without the file guard."""
    from fairseq.distributed.utils import broadcast, get_rank

    if get_rank(group) == src_rank:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = torch.ByteTensor(buffer.getbuffer()).to(dist_device)
        broadcast(torch.LongTensor([len(data)]).to(dist_device), src=src_rank, group=group)
        broadcast(data, src=src_rank, group=group)
        return obj
    length = torch.LongTensor([0]).to(dist_device)
    broadcast(length, src=src_rank, group=group)
    data = torch.ByteTensor(int(length.item())).to(dist_device)
    broadcast(data, src=src_rank, group=group)
    return torch.load(io.BytesIO(data.cpu().numpy()), map_location="cpu", weights_only=False)


def restart_best_tracking():
    """Forget fairseq's best validation loss (``checkpoint_best.pt`` and ``--patience``) so
    that both count from the model as it is now. ``fairseq-train`` runs as
    ``fairseq_cli.train`` or, under ``python -m``, as ``__main__``."""
    from fairseq import checkpoint_utils

    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best
    for name in ("fairseq_cli.train", "__main__"):
        fn = getattr(sys.modules.get(name), "should_stop_early", None)
        code = getattr(fn, "__code__", None)
        if code is None or not code.co_filename.replace(os.sep, "/").endswith(
                "fairseq_cli/train.py"):
            continue
        for attr in ("best", "num_runs"):
            if hasattr(fn, attr):
                delattr(fn, attr)


_EXITING = threading.Event()
_PREFETCHERS = weakref.WeakSet()


def _until_exit(source):
    """``source``'s items until the interpreter starts to exit."""
    for item in source:
        if _EXITING.is_set():
            return
        yield item


def _install_prefetch_stop():
    """Make every ``BufferedIterator`` started from now on stoppable at exit."""
    from fairseq.data import iterators

    base = iterators.BackgroundConsumer
    if getattr(base, "_stops_at_exit", False):
        return

    class BackgroundConsumer(base):
        """fairseq's prefetch thread, ending at its next batch once the interpreter exits."""

        _stops_at_exit = True

        def __init__(self, queue, source, max_len, cuda_device):
            super().__init__(queue, _until_exit(source), max_len, cuda_device)
            _PREFETCHERS.add(self)

    iterators.BackgroundConsumer = BackgroundConsumer
    atexit.register(stop_prefetch_threads)


def stop_prefetch_threads(timeout=10.0):
    """Stop and join fairseq's prefetch threads (run at exit): each finishes the batch it is
    collating, and its queue is emptied so that a thread waiting to put one returns. A thread
    still busy after ``timeout`` seconds is left as it is."""
    _EXITING.set()
    deadline = time.monotonic() + timeout
    for thread in list(_PREFETCHERS):
        while thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                while True:
                    thread._queue.get_nowait()
            thread.join(0.01)


def install():
    """Idempotently install every shim."""
    global _INSTALLED
    if _INSTALLED:
        return
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch >= 2.4
        add(checkpoint_safe_globals())
        from fairseq.distributed import utils as dist_utils

        if hasattr(dist_utils, "_broadcast_object_slow"):
            dist_utils._broadcast_object_slow = _broadcast_object_slow
    _patch_fairseq_eval()
    install_checkpoint_shims()
    _install_prefetch_stop()
    install_excepthook()  # refusals raised inside fairseq's code: one line, status 2
    _INSTALLED = True
