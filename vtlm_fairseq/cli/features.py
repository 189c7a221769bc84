"""vtlm-features: import, inspect, validate, merge and export region-feature stores."""

import argparse
import json
import logging
import sys

from ..data.corpus import CorpusError, read_order_file
from ..data.feature_store import FeatureStore, FeatureStoreError, merge_stores
from ..data.reference_features import export_reference_pickles, import_reference_pickles
from .logging_setup import setup_logging

logger = logging.getLogger("vtlm_fairseq.features")


def get_parser():
    p = argparse.ArgumentParser(
        prog="vtlm-features", description="Manage HDF5 region-feature stores."
    )
    sub = p.add_subparsers(dest="command", required=True)

    imp = sub.add_parser(
        "import", help="import the reference code's per-image pickles into a store"
    )
    imp.add_argument("pickle_dir")
    imp.add_argument("store")
    imp.add_argument("--num-regions", type=int, default=36)
    imp.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    imp.add_argument("--num-classes", type=int, default=601)
    imp.add_argument("--order", nargs="*", default=[], help="order files to check against")
    imp.add_argument("--append", action="store_true", help="add to an existing store")

    ins = sub.add_parser("inspect", help="print a store's summary (and some images)")
    ins.add_argument("store")
    ins.add_argument("--image", nargs="*", default=[], help="also print these images")

    val = sub.add_parser("validate", help="scan every value; check order files")
    val.add_argument("store")
    val.add_argument("--order", nargs="*", default=[], help="order files whose images must be present")

    mrg = sub.add_parser("merge", help="concatenate stores (e.g. extraction shards)")
    mrg.add_argument("output")
    mrg.add_argument("inputs", nargs="+")

    exp = sub.add_parser("export", help="write images as reference-format pickles")
    exp.add_argument("store")
    exp.add_argument("out_dir")
    exp.add_argument("--image", nargs="+", required=True)
    return p


def run(args):
    if args.command == "import":
        report = import_reference_pickles(
            args.pickle_dir,
            args.store,
            num_regions=args.num_regions,
            dtype=args.dtype,
            num_classes=args.num_classes,
            order_files=args.order,
            append=args.append,
        )
        for line in report.lines():
            print(line)
        return 0 if not report.missing else 2
    if args.command == "inspect":
        store = FeatureStore(args.store, validate="none")
        print(json.dumps(store.summary(), indent=2))
        for name in args.image:
            r = store.read(name)
            print(f"{name}: {len(r)} regions")
            for k in range(len(r)):
                box = ", ".join(f"{v:.3f}" for v in r.boxes[k])
                print(
                    f"  {k:3d} class {int(r.classes[k]):3d} score {r.scores[k]:.3f} "
                    f"box [{box}] |feature| {float((r.features[k].astype('float32') ** 2).sum() ** 0.5):.2f}"
                )
        return 0
    if args.command == "validate":
        store = FeatureStore(args.store, validate="full")
        status = 0
        for order in args.order:
            names = read_order_file(order)
            _, absent = store.rows_for(names, order, missing="drop")
            for line, name in absent:
                print(f"{order}:{line}: image '{name}' is not in {args.store}")
            print(f"{order}: {len(names) - len(absent)} of {len(names)} images present")
            status = status or (2 if absent else 0)
        print(f"{args.store}: {len(store)} images, all values valid")
        return status
    if args.command == "merge":
        n = merge_stores(args.inputs, args.output)
        print(f"{args.output}: {n} images from {len(args.inputs)} stores")
        return 0
    if args.command == "export":
        for path in export_reference_pickles(args.store, args.image, args.out_dir):
            print(path)
        return 0
    raise AssertionError(args.command)


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        sys.exit(run(args))
    except (FeatureStoreError, CorpusError) as e:
        logger.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    cli_main()
