"""Command lines built from settings dataclasses: every field with a ``help`` in its metadata is a flag.

A field is declared once, with its default and help text, in the dataclass that owns it
(``dataset.mix.DataArgs``, ``training.args.ModelArgs``, ``training.freeze_policy.TrainScope``,
``serving.options.ChatOptions``, ...); scripts compose those dataclasses and get their flags from here. The
flag is ``--<name>`` unless the metadata names others (``flag="--vision-tower"`` or a tuple of aliases);
booleans are ``store_true`` switches. This package imports nothing of the project, so every layer may use it.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


def flag(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field that ``add_flags`` turns into a command-line option."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, optional: bool = False) -> None:
    """One option per flag field of the dataclass ``cls``. With ``optional`` a flag that is not given is absent
    from the parsed namespace (its default is ``argparse.SUPPRESS``), so callers can tell given from default."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        names = meta.get("flag", f"--{f.name}")
        names = (names,) if isinstance(names, str) else tuple(names)
        default = argparse.SUPPRESS if optional else (None if meta.get("required") else f.default)
        if f.type in ("bool", bool):
            parser.add_argument(*names, dest=f.name, action="store_true", default=default, help=meta["help"])
            continue
        parser.add_argument(
            *names,
            dest=f.name,
            type=TYPES[str(f.type)],
            default=default,
            required=bool(meta.get("required")) and not optional,
            choices=meta.get("choices"),
            help=meta["help"],
        )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help; the description printed as written."""


def build_parser(cls: type, description: str) -> argparse.ArgumentParser:
    """A parser with the flags of ``cls`` (a dataclass that may inherit the fields of several others)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_flags(parser, cls)
    return parser


__all__ = ["HelpFormatter", "add_flags", "build_parser", "flag"]
