"""``mammo-density retry``: make undelivered SRs due now instead of after their backoff.

For the moment a PACS is back or a destination was fixed. It only reschedules rows of the
SR outbox database; the running ``serve`` sends them within its next poll (0.1 s). Without
a running ``serve`` they are sent when it starts (it retries everything pending at start).
"""

from __future__ import annotations

import argparse
import sys

from mammo_density.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retry", help="send undelivered SRs now (after a PACS outage)")
    p.add_argument("--data-dir", help="state, spool and outbox folder")
    p.add_argument("--destination", metavar="DEST",
                   help="only this destination, as `status` shows it (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mammo_density.plugin.outbox import DB_NAME, Outbox

    if not (settings.data_dir / DB_NAME).is_file():
        print(f"mammo-density retry: no SR outbox in {settings.data_dir} (check --data-dir / "
              "MAMMO_DENSITY_DATA_DIR)", file=sys.stderr)
        return 1
    count = Outbox(settings).retry_now(args.destination)
    what = f" to {args.destination}" if args.destination else ""
    print(f"{count} undelivered SR deliver{'y' if count == 1 else 'ies'}{what} due now; a "
          "running `serve` sends them at once")
    return 0
