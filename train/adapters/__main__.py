"""``python -m mammo_density.train.adapters NAME ROOT --out manifest.csv``."""

from __future__ import annotations

import argparse
import sys

from mammo_density.logsetup import configure_logging
from mammo_density.train.adapters import ADAPTERS, get
from mammo_density.train.adapters.common import AdapterError
from mammo_density.train.data import reader_agreement


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mammo_density.train.adapters",
                                description="Write a training manifest from a public dataset.")
    p.add_argument("dataset", choices=sorted(ADAPTERS))
    p.add_argument("root", help="the dataset's folder as downloaded")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--path-prefix", default="", help="EMBED: server prefix of anon_dicom_path")
    args = p.parse_args(argv)
    configure_logging(0)
    kwargs = {"path_prefix": args.path_prefix} if args.dataset == "embed" else {}
    try:
        records = get(args.dataset).convert(args.root, args.out, **kwargs)
    except (AdapterError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(records)} images, {len({r.exam_id for r in records})} exams -> {args.out}")
    agreement = reader_agreement(records)
    if agreement.get("readers", 0) > 1:
        print(f"reader agreement: {agreement}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
