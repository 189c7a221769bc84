"""vtlm-features: import, inspect, validate, merge and export region-feature stores."""

import argparse
import json
import logging

import numpy as np

from ..text.corpus import read_order_file
from ..data.feature_store import merge_stores, open_store
from ..features.reference_features import export_reference_pickles, import_reference_pickles
from .command import run_command

logger = logging.getLogger("vtlm_fairseq.features")
SPEC_HELP = "a store (.h5), a folder of stores, a .txt manifest listing them, or a comma-separated list of these"


def get_parser():
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="vtlm-features",
        description="Manage HDF5 region-feature stores. Every store is written to a temporary file and "
        "renamed into place when complete, so an interrupted command never leaves half a store.",
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="command", required=True)

    imp = sub.add_parser(
        "import", help="import the reference code's per-image pickles into a store", formatter_class=fmt
    )
    imp.add_argument("pickle_dir", help="folder of IMAGE_NAME.pkl files (the reference's extraction output)")
    imp.add_argument("store", help="the store to write (.h5)")
    imp.add_argument("--num-regions", type=int, default=None,
                     help="region slots per image; an image with more keeps its top regions by score "
                     "(None: the most regions a sample of the pickles holds; an appended store keeps its own)")
    imp.add_argument("--feature-dim", type=int, default=None,
                     help="feature dimension to import; files of another one are reported as broken "
                     "(None: that of most files)")
    imp.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature precision")
    imp.add_argument("--num-classes", type=int, default=601, help="detector classes (OpenImages v4: 601)")
    imp.add_argument("--order", nargs="*", default=[], help="order files whose images must have a pickle")
    imp.add_argument("--append", action="store_true", help="add to an existing store (images in it are skipped)")
    imp.add_argument("--force", action="store_true", help="replace an existing store")

    ins = sub.add_parser("inspect", help="print a store's summary as JSON (and some images)", formatter_class=fmt)
    ins.add_argument("store", help=f"the store: {SPEC_HELP}")
    ins.add_argument("--image", nargs="*", default=[], help="also give these images' regions (under 'regions')")

    val = sub.add_parser(
        "validate", help="scan every value and record the validation in the store, so that opening it later "
        "checks nothing more; check order files", formatter_class=fmt,
    )
    val.add_argument("store", help=f"the store: {SPEC_HELP}")
    val.add_argument("--order", nargs="*", default=[], help="order files whose images must be present")

    mrg = sub.add_parser(
        "merge", help="concatenate stores (e.g. extraction shards) into a new one", formatter_class=fmt
    )
    mrg.add_argument("output", help="the merged store to write; must not be one of the inputs")
    mrg.add_argument("inputs", nargs="+",
                     help="stores to merge, in order (each a store, a folder of them or a .txt manifest); an image "
                     "in two of them is an error. Training reads shards as one without a merge: pass them to "
                     "--region-features")
    mrg.add_argument("--force", action="store_true", help="replace an existing output")

    exp = sub.add_parser("export", help="write images as reference-format pickles", formatter_class=fmt)
    exp.add_argument("store", help=f"the store: {SPEC_HELP}")
    exp.add_argument("out_dir", help="folder for the IMAGE_NAME.pkl files")
    exp.add_argument("--image", nargs="+", required=True, help="images to export")
    return p  # fmt: skip


def _regions_json(regions):
    return [
        {
            "class": int(regions.classes[k]),
            "score": round(float(regions.scores[k]), 4),
            "box": [round(float(v), 4) for v in regions.boxes[k]],
            "feature_norm": round(float(np.linalg.norm(regions.features[k].astype(np.float32))), 4),
        }
        for k in range(len(regions))
    ]


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
            feature_dim=args.feature_dim,
            overwrite=args.force,
        )
        for line in report.lines():
            logger.info("%s", line)
        return 0 if not report.missing else 2
    if args.command == "inspect":
        store = open_store(args.store, validate="none")
        store.validate(scan_features=False)  # what it summarises, even if validated; `validate` scans the rest
        summary = store.summary()
        if args.image:  # one JSON document, so that `inspect ... | jq` works
            summary["regions"] = {name: _regions_json(store.read(name)) for name in args.image}
        print(json.dumps(summary, indent=2))
        return 0
    if args.command == "validate":
        store = open_store(args.store, validate="none")
        store.validate(record=True)
        status = 0
        for order in args.order:
            names = read_order_file(order)
            _, absent = store.rows_for(names, order, missing="drop")
            for line, name in absent:
                logger.error("%s:%d: image '%s' is not in %s", order, line, name, args.store)
            logger.info("%s: %d of %d images present", order, len(names) - len(absent), len(names))
            status = status or (2 if absent else 0)
        logger.info(
            "%s: %d images, all values valid%s", args.store, len(store),
            ", recorded in the store" if store.validated else "",
        )  # fmt: skip
        return status
    if args.command == "merge":
        n = merge_stores(args.inputs, args.output, force=args.force)
        logger.info("%s: %d images from %d stores", args.output, n, len(args.inputs))
        return 0
    if args.command == "export":
        for path in export_reference_pickles(args.store, args.image, args.out_dir):
            print(path)
        return 0
    raise AssertionError(args.command)


def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    run_command(lambda: run(args))


if __name__ == "__main__":
    cli_main()
