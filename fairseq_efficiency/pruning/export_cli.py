"""``python -m fairseq_efficiency.pruning.export_cli`` = ``fairseq-efficiency-sparse-export``."""
import sys

from fairseq_efficiency.pruning.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
