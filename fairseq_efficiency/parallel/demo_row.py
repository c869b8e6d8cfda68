"""Demo row: HybridNMT (``hybrid_lstm``) trained on 2 CPU ranks (wavefront + data-parallel head)."""
from fairseq_efficiency.cli.demo import BASELINE_OPTIM, DemoContext, register_demo_row

# the baseline's sizes, but 2+2 layers so that each of the 2 ranks owns one layer per side
HYBRID_MODEL = [
    "--arch", "hybrid_lstm", "--layers", "2", "--encoder-embed-dim", "128",
    "--decoder-embed-dim", "128", "--hidden-size", "256", "--dropout", "0.1",
]
PIPELINE = ["--pipeline-encoder-balance", "[1,1]", "--pipeline-decoder-balance", "[1,1]",
            "--pipeline-chunks", "4"]


def hybrid_optim():
    args = list(BASELINE_OPTIM)
    args[args.index("--criterion") + 1] = "hybrid_cross_entropy"  # per-rank batch shares
    return args


@register_demo_row("hybrid_lstm_2ranks", order=60)
def hybrid_row(ctx: DemoContext):
    res = ctx.train("hybrid_lstm_2ranks", extra_args=PIPELINE, nproc=2,
                    base_args=HYBRID_MODEL + hybrid_optim())
    return ctx.evaluate(res)
