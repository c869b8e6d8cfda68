"""Files read by the plugin and by fairseq with the plugin loaded never run code, allocate
without bound or feed NaN weights to the tools; refusals are one line naming the file."""
import argparse
import os

import pytest
import torch

import fairseq_efficiency  # noqa: F401  (installs the shims under test)
from fairseq_efficiency.cli.userdir import userdir
from tests.helpers import assert_one_line_error, run_cli, train_args
from tests.parallel.test_cli import _args as hybrid_args


def payload(marker):
    return f"__import__('os').system('touch {marker}') or [2]"


def one_line_error(res, *needles):
    """The plugin's user-error exit (status 2, one ``fairseq-efficiency:`` line, no
    traceback), the line holding every needle."""
    assert_one_line_error(res, needles[0])
    line = next(line for line in (res.stdout + res.stderr).splitlines()
                if "fairseq-efficiency:" in line)
    assert all(n in line for n in needles), line


@pytest.fixture(scope="module")
def trained(tiny_data_bin, tmp_path_factory):
    """A tiny hybrid_lstm and a tiny fairseq lstm checkpoint (2 updates each)."""
    d = tmp_path_factory.mktemp("trained")
    run_cli("fairseq_cli.train", hybrid_args(tiny_data_bin, d / "hybrid", "--max-update", "2"))
    run_cli("fairseq_cli.train", train_args(tiny_data_bin, d / "lstm", "--max-update", "2"))
    return {"hybrid": str(d / "hybrid" / "checkpoint_last.pt"),
            "lstm": str(d / "lstm" / "checkpoint_last.pt")}


@pytest.fixture
def hostile(trained, tmp_path):
    """``(path, marker)`` makers: the trained checkpoints with a payload in a list option."""
    def make(kind):
        marker = str(tmp_path / f"MARKER-{kind}")
        state = torch.load(trained[kind])
        if kind == "hybrid":
            state["cfg"]["model"]["pipeline_encoder_balance"] = payload(marker)
            state["cfg"]["model"]["pipeline_decoder_balance"] = payload(marker)
        else:  # stock fairseq lstm: adaptive softmax cutoffs go through utils.eval_str_list
            model = state["cfg"]["model"]
            assert isinstance(model, argparse.Namespace)
            model.criterion = "adaptive_loss"
            model.adaptive_softmax_cutoff = payload(marker)
            state["cfg"]["criterion"] = {"_name": "adaptive_loss", "sentence_avg": False,
                                         "ddp_backend": "legacy_ddp"}
        path = str(tmp_path / f"{kind}-payload.pt")
        torch.save(state, path)
        return path, marker
    return make


@pytest.mark.parametrize("kind", ["hybrid", "lstm"])
def test_payload_refused_by_generate(kind, hostile, tiny_data_bin):
    path, marker = hostile(kind)
    option = "pipeline_encoder_balance" if kind == "hybrid" else "adaptive_softmax_cutoff"
    res = run_cli("fairseq_cli.generate", [tiny_data_bin, "--user-dir", userdir(), "--path", path,
                                           "--cpu", "--beam", "1", "--batch-size", "8"],
                  check=False)
    one_line_error(res, "holds Python code", option, path)
    assert not os.path.exists(marker)


def test_payload_refused_by_interactive_and_restore_file(hostile, tiny_data_bin, tmp_path):
    path, marker = hostile("hybrid")
    (tmp_path / "in.txt").write_text("a b c\n")
    res = run_cli("fairseq_cli.interactive", [
        tiny_data_bin, "--user-dir", userdir(), "--path", path, "--cpu", "--beam", "1",
        "--source-lang", "src", "--target-lang", "tgt", "--input", tmp_path / "in.txt"],
        check=False)
    one_line_error(res, "holds Python code", "pipeline_encoder_balance", path)
    res = run_cli("fairseq_cli.train", hybrid_args(tiny_data_bin, tmp_path / "ck") + [
        "--restore-file", path, "--max-update", "3"], check=False)
    one_line_error(res, "holds Python code", "pipeline_encoder_balance", path)
    assert not os.path.exists(marker)
    assert not os.path.exists(tmp_path / "ck" / "checkpoint_last.pt")


def test_payload_refused_by_prune_and_export(hostile, tmp_path, capsys):
    from fairseq_efficiency.pruning.cli import export_main, prune_main

    path, marker = hostile("hybrid")
    assert prune_main([path, "-o", str(tmp_path / "p.pt")]) == 2
    assert export_main([path, "-o", str(tmp_path / "e.pt")]) == 2
    for line in capsys.readouterr().err.strip().splitlines():
        assert "holds Python code" in line and "pipeline_encoder_balance" in line and path in line
    assert not os.path.exists(marker)
    assert sorted(os.listdir(tmp_path)) == ["hybrid-payload.pt"]


def test_fairseq_eval_is_literal_only(hostile, tmp_path):
    """Behind the load-time check: fairseq's own evaluators refuse code, keep literals."""
    import fairseq.models.fconv as fconv
    import fairseq.optim.adam as adam
    from fairseq import options, tasks, utils
    from fairseq.models import lstm
    from omegaconf import OmegaConf

    marker = tmp_path / "MARKER"
    for fn in (utils.eval_str_list, lstm.utils.eval_str_list, options.eval_str_list,
               utils.eval_bool, options.eval_bool, utils.eval_str_dict, fconv.eval, adam.eval):
        with pytest.raises(ValueError, match="not a literal value"):
            fn(payload(marker))
    assert utils.eval_str_list("[10, 20]", type=int) == [10, 20]
    assert utils.eval_str_list("0.5") == [0.5] and utils.eval_bool("True") is True
    assert utils.eval_str_dict('{"beam": 4}') == {"beam": 4}
    assert fconv.eval("[(512, 3)] * 2 + [(1024, 3)]") == [(512, 3), (512, 3), (1024, 3)]
    assert adam.eval("(0.9, 0.98)") == (0.9, 0.98)
    with pytest.raises(ValueError):
        fconv.eval("[0] * 10 ** 12")
    # the stock lstm built from the payload config (bypassing the load-time check)
    path, marker = hostile("lstm")
    state = torch.load(path)
    task = tasks.setup_task(OmegaConf.create(state["cfg"]["task"]))
    with pytest.raises(ValueError, match="not a literal value"):
        task.build_model(state["cfg"]["model"])
    assert not os.path.exists(marker)


def test_plugin_list_options_are_literals(tiny_data_bin):
    from fairseq_efficiency.compat import literal_list
    from fairseq_efficiency.parallel.hook import build
    from tests.parallel.test_hybrid_lstm import _cfg

    assert literal_list("[1, 1]", "--x") == [1, 1] and literal_list("2", "--x") == [2]
    assert literal_list(None, "--x") is None
    for bad in ("[1] * 2", "__import__('os')", "[1, 'a']", "[1.5]", "{1: 2}"):
        with pytest.raises(ValueError, match="--x"):
            literal_list(bad, "--x")
    cfg = _cfg(tiny_data_bin, "--distributed-world-size", "2")
    cfg.task.pipeline_encoder_balance = "[1]+[1]"
    with pytest.raises(ValueError, match="--pipeline-encoder-balance must be a list literal"):
        build(cfg.task)


@pytest.mark.parametrize("balance", ["[1]", "[1,2]", "[2,0]"])
def test_hybrid_balance_must_match_layers_in_one_process(tiny_data_bin, balance):
    from fairseq import tasks

    from tests.parallel.test_hybrid_lstm import _cfg

    cfg = _cfg(tiny_data_bin, "--pipeline-encoder-balance", balance,
               "--pipeline-decoder-balance", balance, "--pipeline-chunks", "2")
    task = tasks.setup_task(cfg.task)
    with pytest.raises(ValueError, match="summing to the 2 layers"):
        task.build_model(cfg.model)


def test_prune_refuses_unreadable_files(trained, tmp_path, capsys):
    from fairseq_efficiency.pruning.cli import export_main, prune_main

    data = open(trained["hybrid"], "rb").read()
    truncated, text = tmp_path / "truncated.pt", tmp_path / "notes.pt"
    truncated.write_bytes(data[:len(data) // 2])
    text.write_text("epoch 1 loss 3.2\n")
    for bad in (truncated, text):
        assert prune_main([str(bad), "-o", str(tmp_path / "o.pt")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{bad} is not a readable checkpoint" in err, err
    assert export_main([str(truncated), "-o", str(tmp_path / "o.pt")]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_prune_and_export_refuse_nan_weights(trained, tmp_path, capsys):
    from fairseq_efficiency.pruning.cli import export_main, prune_main

    state = torch.load(trained["hybrid"])
    name = next(k for k, t in state["model"].items() if t.is_floating_point())
    state["model"][name][0] = float("nan")
    bad = str(tmp_path / "nan.pt")
    torch.save(state, bad)
    assert prune_main([bad, "-o", str(tmp_path / "o.pt")]) == 2
    assert export_main([bad, "-o", str(tmp_path / "o.pt")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("NaN/Inf" in l and name in l and bad in l for l in lines)
    assert not (tmp_path / "o.pt").exists()


DENSIFY_PROBE = """
import resource, sys, torch
import fairseq_efficiency
vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
try:
    torch.load(sys.argv[1])
except ValueError as e:
    print('refused:', e)
"""


def test_sparse_export_shape_checked_before_allocating(tmp_path):
    """A tiny file claiming a 2**28-element tensor is refused without allocating 1 GiB."""
    import subprocess
    import sys

    from fairseq_efficiency.pruning.export import SparseTensor, densify

    st = SparseTensor(torch.tensor([0.0, 1.5] * 40))
    st.shape = (1 << 14, 1 << 14)  # 2**28 float32 = 1 GiB if allocated
    path = tmp_path / "crafted.pt"
    torch.save({"model": {"w": st}}, path)
    assert path.stat().st_size < 4096
    res = subprocess.run([sys.executable, "-c", DENSIFY_PROBE, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert "refused: sparse tensor of shape (16384, 16384): bitmask of 10 bytes, the shape " \
           "needs 33554432" in res.stdout, res.stdout + res.stderr[-2000:]
    # the other fields are checked against each other too
    good = SparseTensor(torch.tensor([0.0, 1.5] * 40))
    assert torch.equal(densify(*good.__reduce__()[1]), torch.tensor([0.0, 1.5] * 40))
    for args, msg in [(((-1, 80), good.bits, good.values), "invalid shape"),
                      (((80,), good.bits.int(), good.values), "1-D uint8"),
                      (((80,), good.bits, good.values[:-1]), "40 positions set"),
                      (((80,), good.bits, good.values.long()), "floating-point")]:
        with pytest.raises(ValueError, match=msg):
            densify(*args)
