"""``mammo-density config``: print the effective configuration, secrets masked."""

from __future__ import annotations

import argparse
import json

from mammo_density.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    p.add_argument("--json", action="store_true", help="print JSON instead of TOML-like text")
    p.set_defaults(func=run)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return '""  # unset'
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def run(args: argparse.Namespace, settings: Settings) -> int:
    data = settings.redacted()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key} = {_toml_value(value)}")
    return 0
