"""Named sets of Assistant options (assist/presets.py)."""
from fairseq_efficiency.assist import presets


class Cfg:
    def __init__(self, **kw):
        for f, v in presets._defaults().items():
            setattr(self, f, v)
        self.__dict__.update(kw)


def test_authors_preset_sets_every_flag():
    r = presets.resolve(Cfg(assist_preset="authors", instance_selection="autoassist"))
    assert (r.assist_threshold, r.assist_floor_on, r.assist_loss_smoothing, r.assist_features,
            r.assist_mini_steps, r.assist_lr, r.assist_l2, r.assist_min_keep,
            r.assist_warmup_epochs) == ("pass-mean", "b", 0.1, "tfidf-tf-len", 4, 0.5, 0.1, 0.5, 1)
    assert r.instance_selection == "autoassist"           # everything else is cfg's own


def test_paper_preset_is_the_defaults_and_explicit_options_win():
    d = presets._defaults()
    assert d["assist_preset"] == "paper"
    assert all(d[k] == v for k, v in presets.PRESETS["paper"].items())
    r = presets.resolve(Cfg(assist_preset="authors", assist_lr=0.3, assist_mini_steps=2))
    assert (r.assist_lr, r.assist_mini_steps, r.assist_threshold) == (0.3, 2, "pass-mean")
    r = presets.resolve(Cfg(assist_threshold="pass-mean"))  # one flag on top of paper
    assert (r.assist_threshold, r.assist_floor_on) == ("pass-mean", "keep")
    assert set(presets.PRESETS["authors"]) == set(presets.PRESETS["paper"])
    assert set(presets.PRESETS["paper"]) <= {f for f in d if f.startswith("assist_")}
