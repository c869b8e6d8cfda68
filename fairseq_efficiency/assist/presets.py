"""Named sets of Assistant options (``--assist-preset``).

* ``paper`` -- the paper's Algorithm 1 as this plugin implements it (the defaults):
  bias-corrected EMA threshold (eq. 4), floor on the final keep probability,
  token-mean NLL, TF-IDF features, per-instance SGD (eq. 5).
* ``authors`` -- the authors' code (``zhangjiong724/autoassist-exp``,
  ``machine_translation/fairseq/data/assistant.py`` and ``multiqueue_train.py``):
  threshold = uncorrected EMA (0.99, from 0) in the first pass, then the previous
  pass's mean loss; ``b = max(0.5, 1 - rho)``, keep ``= b + (1 - b) g`` (every
  candidate kept in the first pass); label-smoothed (0.1) token-mean loss;
  TF-IDF + TF + two length features; each Boss batch bootstrap-resampled into
  <= 4 plain SGD mini-steps of ``0.5 / |b|`` with weight decay 0.1.

A preset fills the options; an option given with a value other than its default wins.
"""
import dataclasses
import logging

from fairseq_efficiency.assist.config import AutoAssistConfig

logger = logging.getLogger(__name__)

PRESETS = {
    "paper": dict(assist_threshold="ema", assist_floor_on="keep", assist_loss_smoothing=0.0,
                  assist_features="tfidf", assist_mini_steps=0, assist_lr=0.1, assist_l2=1e-4,
                  assist_threshold_decay=0.99, assist_confidence_decay=0.95,
                  assist_min_keep=0.5, assist_warmup_epochs=1),
    "authors": dict(assist_threshold="pass-mean", assist_floor_on="b", assist_loss_smoothing=0.1,
                    assist_features="tfidf-tf-len", assist_mini_steps=4, assist_lr=0.5,
                    assist_l2=0.1, assist_threshold_decay=0.99, assist_confidence_decay=0.95,
                    assist_min_keep=0.5, assist_warmup_epochs=1),
}


def _defaults():
    return {f.name: f.default for f in dataclasses.fields(AutoAssistConfig)}


class PresetConfig:
    """``cfg`` seen through a preset: preset values replace options left at their defaults;
    every other attribute is ``cfg``'s own."""

    def __init__(self, cfg, overrides):
        self._cfg, self._overrides = cfg, dict(overrides)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._cfg, name)


def preset_options(cfg):
    """The options ``--assist-preset`` sets on ``cfg``: ``{name: value}``."""
    name = str(getattr(cfg, "assist_preset", "paper"))
    if name not in PRESETS:
        from fairseq_efficiency.errors import PluginConfigError

        raise PluginConfigError(f"--assist-preset must be one of {', '.join(PRESETS)}; got {name!r}")
    defaults = _defaults()
    out = {}
    for key, value in PRESETS[name].items():
        given = getattr(cfg, key, defaults[key])
        out[key] = value if _same(given, defaults[key]) else given
    return out


def _same(a, b):
    return str(a) == str(b) if isinstance(b, str) else a == b


def resolve(cfg):
    """``cfg`` with the preset applied (a read-only view; ``cfg`` is not modified)."""
    opts = preset_options(cfg)
    if str(getattr(cfg, "assist_preset", "paper")) != "paper":
        logger.info("instance selection: --assist-preset %s: %s", cfg.assist_preset,
                    ", ".join(f"{k}={v}" for k, v in opts.items()))
    return PresetConfig(cfg, opts)
