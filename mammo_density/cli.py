"""The one command, ``mammo-density``, and the composition root of the product.

Each sub-command lives in :mod:`mammo_density.commands` as a module with
``add_parser(subparsers)`` that registers its parser and sets ``func`` to a callable
taking ``(args, settings)`` and returning an exit code. Sub-commands are listed in
:data:`COMMANDS`; one is listed only once it works.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mammo_density import __version__
from mammo_density.config import ConfigError, load_settings
from mammo_density.logsetup import configure_logging

log = logging.getLogger(__name__)

COMMANDS: tuple[str, ...] = (
    "config",
    "serve",
    "status",
    "retry",
    "dose-report",
    "synth",
    "train",
    "evaluate",
    "export",
    "quantize",
    "worker",
    "classify",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammo-density",
        description="Breast density (BI-RADS A-D, dense/non-dense) for screening mammography, "
        "reported back to the PACS as a DICOM Structured Report.",
    )
    parser.add_argument("--version", action="version", version=f"mammo-density {__version__}")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file "
                        "(default: $MAMMO_DENSITY_CONFIG)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mammo_density.commands.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def settings_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Command-line options that override configuration (``--port`` and friends)."""
    mapping = {
        "port": "listen_port",
        "ae_title": "ae_title",
        "data_dir": "data_dir",
        "broker_url": "broker_url",
        "model_dir": "model_dir",
    }
    return {key: getattr(args, opt) for opt, key in mapping.items() if hasattr(args, opt)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose, args.log_format)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        settings = load_settings(args.config, **settings_overrides(args))
    except ConfigError as err:
        print(f"mammo-density: {err}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
