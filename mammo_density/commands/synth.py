"""``mammo-density synth OUTDIR``: synthetic 4-view screening studies with ground truth."""

from __future__ import annotations

import argparse
import sys
import time

from mammo_density.config import Settings


def _mix(text: str) -> tuple[float, float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"class mix must be four numbers A,B,C,D: {text!r}") \
            from None
    if len(parts) != 4 or min(parts) < 0 or sum(parts) <= 0:
        raise argparse.ArgumentTypeError(f"class mix must be four shares A,B,C,D: {text!r}")
    return parts  # type: ignore[return-value]


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0-1: {text!r}")
    return value


def _extras(text: str) -> tuple[str, ...]:
    from mammo_density.synth.generate import EXTRAS

    items = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in items if x not in EXTRAS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown extras {', '.join(unknown)}; choose from {', '.join(EXTRAS)}")
    return items


def _size(text: str) -> str | int:
    from mammo_density.synth.generate import size_divisor

    try:
        size_divisor(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help="write synthetic 4-view screening studies with known density",
        description="Write synthetic screening mammography studies (DICOM, one folder per "
        "study) and OUTDIR/manifest.csv with the ground truth. The same --seed gives the "
        "same files and UIDs: use a new seed for every data set sent to one PACS.")
    p.add_argument("outdir", metavar="OUTDIR")
    p.add_argument("--studies", type=int, default=10, help="number of studies (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=_size, default="small",
                   help="small (1/8 resolution, default), full, or an integer divisor")
    p.add_argument("--vendor", choices=("hologic", "ge", "ims", "mixed"), default="hologic")
    p.add_argument("--transfer-syntax", default="explicit",
                   choices=("explicit", "jpeg2000", "jpegls", "jpeg-lossless", "rle"))
    p.add_argument("--extras", type=_extras, default=(),
                   help="comma list of retake,xccl,spot,missing,for-processing")
    p.add_argument("--extras-rate", type=_share, default=1.0,
                   help="share of studies that get each listed extra (default 1)")
    p.add_argument("--for-processing", action="store_true",
                   help="write For Processing images instead of For Presentation")
    p.add_argument("--codes-only", action="store_true",
                   help="omit ViewPosition; the view is only in ViewCodeSequence")
    p.add_argument("--legacy-codes", action="store_true",
                   help="legacy SNOMED RT (SRT) view codes instead of SNOMED CT")
    p.add_argument("--class-mix", type=_mix, default=None,
                   help="shares of A,B,C,D (default 0.13,0.31,0.45,0.10)")
    p.add_argument("--label-noise", type=_share, default=0.03,
                   help="chance a breast's reader label is one class off (default 0.03)")
    p.add_argument("--breast-differ", type=_share, default=0.10,
                   help="chance the two breasts differ by one class (default 0.10)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--send", metavar="HOST:PORT", help="C-STORE each study to this node")
    p.add_argument("--aet", default="MAMMODENSITY", help="called AE title for --send")
    p.add_argument("--calling-aet", default="MDSYNTH", help="our AE title for --send")
    p.add_argument("--preview", metavar="PNG",
                   help="also draw one study per class (4 views each) into PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mammo_density.synth.generate import DEFAULT_CLASS_MIX, generate

    if args.studies < 0:
        print("mammo-density synth: --studies must be >= 0", file=sys.stderr)
        return 2
    if args.send:
        from mammo_density.synth.send import parse_address

        try:
            parse_address(args.send)
        except ValueError as err:
            print(f"mammo-density synth: --send: {err}", file=sys.stderr)
            return 2
    started = time.monotonic()
    try:
        records = generate(
            args.outdir, studies=args.studies, seed=args.seed, size=args.size,
            vendor=args.vendor, transfer_syntax=args.transfer_syntax, extras=args.extras,
            extras_rate=args.extras_rate, for_processing=args.for_processing,
            codes_only=args.codes_only, legacy_codes=args.legacy_codes,
            class_mix=args.class_mix or DEFAULT_CLASS_MIX, label_noise=args.label_noise,
            breast_differ=args.breast_differ, jobs=max(1, args.jobs),
            progress=not args.no_progress and sys.stderr.isatty())
    except (ValueError, OSError) as err:
        print(f"mammo-density synth: {err}", file=sys.stderr)
        return 2
    images = sum(len(r.images) for r in records)
    print(f"wrote {len(records)} studies ({images} images) and manifest.csv to {args.outdir} "
          f"in {time.monotonic() - started:.1f} s")
    status = 0
    if args.preview:
        from mammo_density.synth.preview import write_preview

        path = write_preview(args.preview, seed=args.seed,
                             vendor="hologic" if args.vendor == "mixed" else args.vendor,
                             size=args.size)
        print(f"preview: {path}")
    if args.send:
        from mammo_density.synth.send import send_studies

        results = send_studies(records, args.send, args.aet, args.calling_aet)
        for res in results:
            state = "ok" if res.ok else "FAILED"
            detail = f" ({res.error})" if res.error else ""
            print(f"{res.exam_id}: {state} {res.sent} stored, {res.failed} failed "
                  f"in {res.seconds:.2f} s{detail}")
        failed = sum(1 for r in results if not r.ok)
        print(f"sent {len(results) - failed}/{len(results)} studies to {args.send} "
              f"(AE {args.aet})")
        if failed:
            status = 1
    return status
