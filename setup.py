from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="vtlm-fairseq",
    version="0.1.0",
    description=(
        "Visual translation language modelling (Caglayan et al., EACL 2021) "
        "as a fairseq plugin"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vtlm_fairseq", "vtlm_fairseq.*"]),
    package_data={"vtlm_fairseq": ["resources/*.json"]},
    install_requires=requirements(),
    extras_require={
        # The TensorFlow object detector for region-feature extraction.
        "extract": ["tensorflow-cpu==2.21.0"],
        # img2dataset, the engine of `vtlm-cc download` (it brings pandas,
        # pyarrow, opencv and albumentations: not for the core install).
        "download": ["img2dataset==1.47.0"],
    },
    entry_points={
        "console_scripts": [
            "vtlm-toy-world=vtlm_fairseq.cli.toy_world:cli_main",
            "vtlm-prepare=vtlm_fairseq.cli.prepare:cli_main",
            "vtlm-features=vtlm_fairseq.cli.features:cli_main",
            "vtlm-extract-features=vtlm_fairseq.cli.extract_features:cli_main",
            "vtlm-probe=vtlm_fairseq.cli.probe:cli_main",
            "vtlm-score=vtlm_fairseq.cli.score:cli_main",
            "vtlm-convert-checkpoint=vtlm_fairseq.cli.convert_checkpoint:cli_main",
            "vtlm-cc=vtlm_fairseq.cli.conceptual_captions:cli_main",
            "vtlm-average-checkpoints=vtlm_fairseq.cli.average_checkpoints:cli_main",
        ],
    },
)
