"""Peak resident memory of pre-training and fine-tuning (issue area 6), at
tiny and base sizes: real fairseq-train runs on the toy world (36 regions
of 1536 dims per image, batches of 64 pairs, data loading in the training
process, a few updates: Adam's state exists from the first one), each in
its own process, its peak RSS taken from wait4. Pre-training saves its
checkpoint, and fine-tuning starts from it as the paper's recipe does
(MMT from VTLM, NMT from TLM). Each figure comes with its baseline: the
text-only counterpart, and the tiny size for base. RSS does not depend on
the load of the machine, so one run per configuration.

    python benchmarks/memory.py --json work_dirs/bench/memory.json
"""

import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script too

from benchmarks.benchlib import (  # noqa: E402
    USER_DIR,
    Report,
    Row,
    base_parser,
    fairseq_command,
    peak_rss_mb,
    quiet_logging,
    toy_data,
)

COMMON = ["--user-dir", USER_DIR, "--optimizer", "adam", "--batch-size", "64", "--cpu", "--num-workers", "0",
          "--disable-validation", "--no-epoch-checkpoints", "--seed", "1", "--log-format", "none"]  # fmt: skip
SIZES = ("tiny", "base")


def stages(data, save_root: Path, size: str) -> Dict[str, List]:
    """fairseq-train arguments of each stage at one size, in run order
    (fine-tuning reads the pre-training checkpoints)."""
    def saved(stage: str) -> Path:
        return save_root / f"{stage}-{size}"

    pretrain = ["--arch", f"vtlm_{size}", "--criterion", "vtlm_loss", "--lr", "1e-4"]
    finetune = ["--arch", f"vtlm_translation_{size}", "--criterion", "label_smoothed_cross_entropy",
                "--label-smoothing", "0.1", "--lr", "1e-5", "--no-save"]  # fmt: skip
    return {
        "TLM": ["--task", "translation_lm", *pretrain, "--save-dir", saved("TLM")],
        "VTLM": ["--task", "visual_tlm", "--region-features", data.store, *pretrain, "--save-dir", saved("VTLM")],
        "NMT from TLM": ["--task", "multimodal_translation", *finetune,
                         "--pretrained-checkpoint", saved("TLM") / "checkpoint_last.pt"],
        "MMT from VTLM": ["--task", "multimodal_translation", "--region-features", data.store, *finetune,
                          "--pretrained-checkpoint", saved("VTLM") / "checkpoint_last.pt"],
    }  # fmt: skip


COMPARISONS = (("VTLM", "TLM"), ("MMT from VTLM", "NMT from TLM"))


def main(argv: Optional[List[str]] = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=1)
    parser.add_argument("--updates", type=int, nargs=2, default=[20, 5], metavar=("TINY", "BASE"),
                        help="training updates of each run at tiny and base size")  # fmt: skip
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    args = parser.parse_args(argv)
    quiet_logging()
    data = toy_data(args.work / "toy")
    report = Report("peak memory", args)
    floor, _ = peak_rss_mb([sys.executable, "-c", "import fairseq, torch, vtlm_fairseq"])
    report.extra["import_floor_mb"] = floor
    print(f"import floor (python, torch, fairseq, vtlm_fairseq): {floor:.0f} MB", flush=True)
    peak: Dict[str, Dict[str, float]] = {}
    save_root = args.work / "memory"
    shutil.rmtree(save_root, ignore_errors=True)  # fairseq-train would resume from an earlier run's checkpoints
    for size in args.sizes:
        updates = args.updates[SIZES.index(size)]
        peak[size] = {}
        for stage, stage_args in stages(data, save_root, size).items():
            command = [fairseq_command("fairseq-train"), data.data_bin, *COMMON, *stage_args,
                       "--max-update", str(updates)]  # fmt: skip
            peak[size][stage] = peak_rss_mb(command)[0]
            print(f"{stage} {size}: {peak[size][stage]:.0f} MB", flush=True)
        for variant, baseline in COMPARISONS:
            report.add(Row("6 peak RSS", f"MB, {updates} updates", f"{variant} {size}", f"{baseline} {size}",
                           peak[size][variant], peak[size][baseline], peak[size][variant] / peak[size][baseline],
                           note=f"import floor {floor:.0f} MB"))  # fmt: skip
    if set(SIZES) <= set(peak):
        for stage in ("VTLM", "MMT from VTLM"):
            report.add(Row("6 peak RSS", "MB", f"{stage} base", f"{stage} tiny", peak["base"][stage],
                           peak["tiny"][stage], peak["base"][stage] / peak["tiny"][stage]))  # fmt: skip
    report.extra["peak_rss_mb"] = peak
    report.finish()


if __name__ == "__main__":
    main()
