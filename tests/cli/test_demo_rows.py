"""The demo's technique rows: what each asks fairseq-train for, and the columns it adds."""
from fairseq_efficiency.cli import demo, demo_rows
from fairseq_efficiency.cli.demo import BASELINE_OPTIM, TrainResult


class Context:
    """Records each row's training runs; evaluation just returns the row's columns."""

    baseline_args = ["data", "--arch", "lstm", "--encoder-layers", "2"]

    def __init__(self, tmp_path, log=""):
        self.runs, self.results, self.tmp_path, self.log = [], {}, tmp_path, log

    def train(self, name, extra_args=(), nproc=1, restore_from=None, base_args=None):
        self.runs.append({"name": name, "extra": list(extra_args), "nproc": nproc,
                          "restore_from": restore_from, "base": base_args})
        log = self.tmp_path / f"{name}.log"
        log.write_text(self.log)
        return TrainResult(name, str(self.tmp_path), str(self.tmp_path / "ck.pt"), 1.0, 10,
                           2.5, str(log), {"train_boss_tok": "750", "train_skip_tok": "250",
                                           "train_rho": "0.4"})

    def evaluate(self, res, **columns):
        return {"row": res.name, **columns}


def test_autoassist_row_reports_boss_and_skipped_tokens(tmp_path):
    ctx = Context(tmp_path)
    row = demo_rows.autoassist_row(ctx)
    assert ctx.runs[0]["extra"] == ["--criterion", "sentence_cross_entropy",
                                    "--instance-selection", "autoassist"]
    assert row == {"row": "autoassist", "Boss tokens": 750, "skipped %": 25.0, "rho": "0.4"}


def test_meprop_rows_switch_the_architecture_only(tmp_path):
    ctx = Context(tmp_path, log="meSimp: layer sizes a=10 b=12\nmeSimp: layer sizes a=8 b=9\n")
    demo_rows.meprop_row(ctx)
    row = demo_rows.mesimp_row(ctx)
    for run in ctx.runs:
        assert run["base"] == ["data", "--arch", "lstm_meprop", "--encoder-layers", "2"]
        assert run["extra"][:3] == ["--meprop-k", "0.0625", "--meprop-alternate"]
    assert ctx.baseline_args[2] == "lstm"  # the baseline's own arguments are left alone
    assert ctx.runs[1]["extra"][3:] == ["--mesimp-interval", "25", "--mesimp-prune-rate", "0.08"]
    assert row["hidden"] == "a=8 b=9"  # the last sizes logged


def test_hybrid_row_runs_two_ranks_with_the_share_aware_criterion(tmp_path):
    ctx = Context(tmp_path)
    demo_rows.hybrid_row(ctx)
    run = ctx.runs[0]
    assert run["nproc"] == 2 and "--pipeline-encoder-balance" in run["extra"]
    optim = run["base"][len(demo_rows.HYBRID_MODEL):]
    assert optim[optim.index("--criterion") + 1] == "hybrid_cross_entropy"
    assert len(optim) == len(BASELINE_OPTIM)


def test_every_row_is_registered():
    assert {"autoassist", "meProp", "meSimp", "pruning", "hybrid_lstm_2ranks"} <= set(demo._ROWS)
