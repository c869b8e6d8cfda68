"""fairseq-efficiency-demo: row registry, table formatting, argument errors."""
import pytest

from fairseq_efficiency.cli import demo


def test_unknown_row_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--rows", "baseline,nope", "--workdir", "unused"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "baseline" in err


def test_rows_register_once_and_table_aligns():
    assert "baseline" in demo._ROWS
    with pytest.raises(ValueError, match="registered twice"):
        demo.register_demo_row("baseline")(lambda ctx: {})
    table = demo.format_table([
        {"row": "baseline", "valid loss": 3.0551, "BLEU": 16.15, "train s": 116.4, "tokens": 1400000},
        {"row": "x", "valid loss": None, "BLEU": 1.0, "train s": 2.0, "tokens": 5, "note": "extra"},
    ])
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1  # every line the same width
    assert "1.40M" in table and "3.055" in table and "| -" in table and "note" in lines[0]


def test_parse_train_log_sums_tokens_over_epochs():
    log = "\n".join([
        '2026 | INFO | train | {"epoch": 1, "train_wpb": "100.5", "train_num_updates": "10"}',
        '2026 | INFO | valid | {"epoch": 1, "valid_loss": "5.5"}',
        '2026 | INFO | train | {"epoch": 2, "train_wpb": "200", "train_num_updates": "15"}',
        '2026 | INFO | valid | {"epoch": 2, "valid_loss": "4.25"}',
    ])
    tokens, valid_loss, last_train = demo.parse_train_log(log)
    assert (tokens, valid_loss) == (1005 + 1000, 4.25) and last_train["epoch"] == 2


def test_every_technique_has_a_row():
    demo._discover_rows()
    assert {"baseline", "autoassist", "meProp", "meSimp", "pruning",
            "hybrid_lstm_2ranks"} <= set(demo._ROWS)
