"""recipes/wmt14_en_de.sh: every variant's fairseq-train arguments parse and set up the task."""
import os
import subprocess

import pytest
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_efficiency.cli.userdir import userdir

RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "recipes", "wmt14_en_de.sh")
VARIANTS = {  # variant -> (arch, what the variant must switch on)
    "baseline": ("lstm", {}),
    "autoassist": ("lstm", {"instance_selection": "autoassist"}),
    "self-paced": ("lstm", {"instance_selection": "self-paced"}),
    "dynamic-sampling": ("lstm", {"instance_selection": "dynamic-sampling"}),
    "meprop": ("lstm_meprop", {"meprop_alternate": True, "encoder_layers": 4}),
    "mesimp": ("lstm_meprop", {"mesimp_interval": 2000}),
    "prune80": ("lstm", {"prune_ratio": 0.8, "prune_scheme": "class-blind", "reset_optimizer": True}),
    "hybrid": ("hybrid_lstm_wmt_en_de", {"criterion": "hybrid_cross_entropy", "pipeline_chunks": 4}),
    "transformer": ("transformer_wmt_en_de", {"share_all_embeddings": True, "lr": [0.001],
                                              "max_tokens": 4096, "clip_norm": 0.0, "fp16": True}),
    "transformer-big": ("transformer_vaswani_wmt_en_de_big", {"lr": [0.0005], "max_tokens": 3584,
                                                              "dropout": 0.3,
                                                              "adam_betas": "(0.9,0.98)"}),
    "transformer-autoassist": ("transformer_wmt_en_de", {"instance_selection": "autoassist"}),
    "transformer-big-autoassist": ("transformer_vaswani_wmt_en_de_big",
                                   {"instance_selection": "autoassist", "label_smoothing": 0.1}),
    "transformer-meprop": ("transformer_meprop", {"meprop_k": 0.0625, "share_all_embeddings": True,
                                                  "warmup_updates": 4000}),
}


def recipe_flags(tmp_path, variant, *extra):
    env = dict(os.environ, USER_DIR=userdir(), WORK=str(tmp_path))
    return subprocess.run(["bash", RECIPE, "flags", variant, *extra], env=env, text=True,
                          capture_output=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_parses_with_the_plugin(variant, tiny_data_bin, tmp_path):
    res = recipe_flags(tmp_path, variant, "--max-update", "7")
    assert res.returncode == 0, res.stderr
    args = res.stdout.splitlines()
    assert args[0] == str(tmp_path / "data-bin" / "wmt14_en_de")
    args[0] = tiny_data_bin
    parsed = options.parse_args_and_arch(options.get_training_parser(), args)
    arch, expected = VARIANTS[variant]
    assert parsed.arch == arch and parsed.max_update == 7  # extra flags come last
    for key, value in expected.items():
        assert getattr(parsed, key) == value, key
    cfg = convert_namespace_to_omegaconf(parsed)
    assert type(tasks.setup_task(cfg.task)).__name__ == "TranslationEfficiencyTask"


def test_unknown_variant_fails(tmp_path):
    res = recipe_flags(tmp_path, "no-such-run")
    assert res.returncode == 2 and "unknown variant no-such-run" in res.stderr


def test_every_variant_is_covered(tmp_path):
    res = subprocess.run(["bash", RECIPE, "variants"], env=dict(os.environ, USER_DIR=userdir()),
                         text=True, capture_output=True)
    assert res.returncode == 0 and set(res.stdout.split()) == set(VARIANTS)
