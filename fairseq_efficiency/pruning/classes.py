"""Weight classes of an NMT model (See et al. 2016, section 3.2 and Figure 2).

The classes are found from parameter names and module types, so they work for
fairseq's ``lstm`` and ``transformer`` and for other encoder-decoder models
built from standard torch modules:

=====================  ==========================================================
class                  parameters
=====================  ==========================================================
``src_embed``          source word embeddings (``encoder.*`` ``nn.Embedding``)
``tgt_embed``          target word embeddings (tied softmax weights counted here once)
``{src,tgt}_layerK``   LSTM layer K (with ``split_lstm``: ``..._ff`` feed-forward
                       ``W_ih`` vs ``..._rec`` recurrent ``W_hh``)
``{src,tgt}_layerK_*`` Transformer layer K: ``self_attn``, ``cross_attn``, ``ffn``
``attention``          the LSTM decoder's attention layer
``softmax``            output projection to the vocabulary (``fc_out``/``output_projection``)
``softmax_hidden``     fairseq LSTM's extra projection before the softmax
other                  the owning module's path (e.g. ``decoder.encoder_hidden_proj``)
=====================  ==========================================================

Biases and normalisation weights (parameters with fewer than 2 dimensions) are
left out unless an ``include`` pattern names them; ``exclude`` patterns remove
parameters. Patterns are Python regular expressions searched in the parameter
name; a pattern that matches no parameter is an error.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch
from torch import nn

from fairseq_efficiency.errors import PluginConfigError

_OUTPUT_NAMES = {"fc_out", "output_projection", "output_proj_vocab", "lm_head"}
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)(?:\.|$)")
_RNN_WEIGHT = re.compile(r"^(weight|bias)_(ih|hh)(?:_l(\d+))?(_reverse)?$")


def split_patterns(patterns) -> List[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (empty items dropped)."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    return [p.strip() for p in patterns if p and p.strip()]


def classify(name: str, module: nn.Module, split_lstm: bool = False) -> str:
    """Weight class of parameter ``name`` owned by ``module`` (rules in the module docstring)."""
    path, _, leaf = name.rpartition(".")
    parts = path.split(".") if path else []
    side = {"encoder": "src", "decoder": "tgt"}.get(parts[0] if parts else "", None)
    layer_m = _LAYER.search(path)

    if isinstance(module, nn.Embedding):
        kind = "pos_embed" if "position" in path else "embed"
        return f"{side}_{kind}" if side else path
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        m = _RNN_WEIGHT.match(leaf)
        if isinstance(module, nn.RNNBase):
            k = int(m.group(3)) if m and m.group(3) else 0
        else:
            k = int(layer_m.group(1)) if layer_m else 0
        base = f"{side or path}_layer{k + 1}"
        if split_lstm and m:
            base += "_ff" if m.group(2) == "ih" else "_rec"
        return base
    if any("attn" in p or "attention" in p for p in parts):
        if layer_m and side:
            kind = "cross_attn" if "encoder_attn" in path else "self_attn"
            return f"{side}_layer{int(layer_m.group(1)) + 1}_{kind}"
        return "attention" if side == "tgt" else f"{side or path}_attention"
    if parts and parts[-1] in _OUTPUT_NAMES:
        return "softmax"
    if parts and parts[-1] == "additional_fc":
        return "softmax_hidden"
    if layer_m and side:
        return f"{side}_layer{int(layer_m.group(1)) + 1}_ffn"
    if not path:
        raise PluginConfigError(f"cannot assign parameter {name!r} to a weight class: it is not "
                                "inside a submodule (exclude it with --prune-exclude)")
    return path


def find_weight_classes(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = (),
                        split_lstm: bool = False) -> "OrderedDict[str, List[str]]":
    """Map class name -> parameter names to prune (each shared tensor listed once).

    ``named_parameters`` already yields a tied tensor (shared embeddings, tied
    softmax) once, under its first name, so tied weights are counted and
    masked once.
    """
    include, exclude = split_patterns(include), split_patterns(exclude)
    modules = dict(model.named_modules())
    params = OrderedDict(model.named_parameters())
    aliases = _aliases(model)
    for kind, pats in (("include", include), ("exclude", exclude)):
        for p in pats:
            try:
                rx = re.compile(p)
            except re.error as e:
                raise PluginConfigError(f"invalid {kind} pattern {p!r}: {e}") from None
            if not any(rx.search(n) for names in aliases.values() for n in names):
                raise PluginConfigError(f"{kind} pattern {p!r} matches no parameter of "
                                        f"{type(model).__name__}")

    def matches(pats, name):
        return any(re.search(p, n) for p in pats for n in aliases.get(name, [name]))

    classes: "OrderedDict[str, List[str]]" = OrderedDict()
    for name, p in params.items():
        if not p.requires_grad or not p.is_floating_point():
            continue
        if include:
            if not matches(include, name):
                continue
        elif p.dim() < 2:  # biases, layer norms
            continue
        if matches(exclude, name):
            continue
        module = modules[name.rpartition(".")[0]]
        classes.setdefault(classify(name, module, split_lstm), []).append(name)
    if not classes:
        raise PluginConfigError(f"no prunable parameter in {type(model).__name__} "
                                "(check --prune-include/--prune-exclude)")
    return classes


def class_tensors(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = (),
                  split_lstm: bool = False) -> "OrderedDict[str, OrderedDict[str, torch.Tensor]]":
    """Class -> ``{parameter name: its data}`` for the parameters of :func:`find_weight_classes`
    (the tensors share the parameters' storage), the input of the pruning schemes."""
    params = dict(model.named_parameters())
    return OrderedDict((c, OrderedDict((n, params[n].data) for n in names))
                       for c, names in find_weight_classes(model, include, exclude,
                                                           split_lstm).items())


def _aliases(model: nn.Module) -> Dict[str, List[str]]:
    """First name of each parameter -> all names it is reachable under (tied weights)."""
    first: Dict[int, str] = {}
    out: Dict[str, List[str]] = OrderedDict()
    for n, p in model.named_parameters(remove_duplicate=False):
        key = first.setdefault(id(p), n)
        out.setdefault(key, []).append(n)
    return out

