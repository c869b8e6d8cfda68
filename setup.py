"""fairseq-efficiency: a fairseq plugin that makes NMT training cheaper."""
from setuptools import find_packages, setup

setup(
    name="fairseq-efficiency",
    version="0.1.0",
    description=(
        "fairseq plugin: AutoAssist instance shrinking, meProp/meSimp, magnitude "
        "pruning and hybrid data/model-parallel LSTMs for neural machine translation"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["fairseq_efficiency", "fairseq_efficiency.*"]),
    install_requires=[
        "torch>=1.13",
        # Official fairseq does not import on Python >= 3.11 (dataclass mutable
        # defaults); fairseq-fixed is the same 0.12 code with that fixed.
        "fairseq==0.12.2; python_version < '3.11'",
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        # hydra-core/omegaconf at the versions each fairseq build pins.
        "hydra-core>=1.0.7,<1.1; python_version < '3.11'",
        "hydra-core==1.3.2; python_version >= '3.11'",
        "omegaconf==2.3.0; python_version >= '3.11'",
        "numpy>=1.21.3",
        "scikit-learn>=1.0",
        "sacrebleu>=2.0",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3"],
        "plots": ["matplotlib>=3.5"],
    },
    entry_points={
        "console_scripts": [
            "fairseq-efficiency-userdir = fairseq_efficiency.cli.userdir:main",
            "fairseq-efficiency-corpus = fairseq_efficiency.data.synthetic:main",
            "fairseq-efficiency-prepare = fairseq_efficiency.data.prepare:main",
            "fairseq-efficiency-demo = fairseq_efficiency.cli.demo:main",
            "fairseq-efficiency-featurize = fairseq_efficiency.assist.features:main",
            "fairseq-efficiency-prune = fairseq_efficiency.pruning.cli:prune_main",
            "fairseq-efficiency-sparse-export = fairseq_efficiency.pruning.cli:export_main",
            "fairseq-efficiency-launch = fairseq_efficiency.cli.launch:main",
            "fairseq-efficiency-report = fairseq_efficiency.cli.report:main",
            "fairseq-efficiency-bench = fairseq_efficiency.cli.bench:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
