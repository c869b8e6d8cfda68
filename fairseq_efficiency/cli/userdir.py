"""``fairseq-efficiency-userdir``: print the directory to pass to ``--user-dir``."""
import os
import sys


def userdir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    print(userdir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
