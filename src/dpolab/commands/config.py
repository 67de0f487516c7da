"""`dpolab config example [dpo|dpop|idpo|ipo|mpo|orpo|simpo|sft]`: print a commented example config.
`dpolab config from-trl FILE`, `dpolab config from-llamafactory FILE`: print another tool's DPO
config as a dpolab config, with a line for each key that could not be carried over."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from dpolab.errors import DpolabError


def example_names() -> list[str]:
    folder = resources.files("dpolab") / "resources" / "examples"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def example_text(name: str) -> str:
    path = resources.files("dpolab") / "resources" / "examples" / f"{name}.yaml"
    if not path.is_file():
        raise DpolabError(f"no example config {name!r}; choose one of {', '.join(example_names())}")
    return path.read_text(encoding="utf-8")


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="example configs")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    example = actions.add_parser("example", help="print a commented example config")
    names = [n + (" (default)" if n == "dpo" else "") for n in example_names()]
    example.add_argument("name", nargs="?", default="dpo", help=", ".join(names))
    example.set_defaults(func=lambda args: print(example_text(args.name), end="") or 0)
    for tool, name in (("trl", "TRL"), ("llamafactory", "LLaMA-Factory")):
        convert = actions.add_parser(
            f"from-{tool}",
            help=f"print a {name} DPO config as a dpolab config",
            description=f"Print a {name} config (YAML) as a dpolab config: its keys mapped "
            "(docs/coming-from-trl-llamafactory.md), a '# not mapped' line for each key that could not "
            "be and why, a '# note' line for each difference to know. Save it with > FILE.yaml.",
        )
        convert.add_argument("file", help=f"the {name} YAML config")
        convert.set_defaults(func=lambda args, tool=tool: _convert(args.file, tool))


def converted(path: str | Path, tool: str):
    """The `Conversion` of a TRL (`trl`) or LLaMA-Factory (`llamafactory`) YAML file."""
    from dpolab.config.parse import read_yaml

    values = read_yaml(path)
    if tool == "trl":
        from dpolab.config.from_trl import convert

        return convert(values)
    from dpolab.config.from_llamafactory import convert

    return convert(values, Path(path))


def _convert(path: str, tool: str) -> int:
    from dpolab.training import config_from_dict

    conversion = converted(path, tool)
    print(conversion.text(path), end="")
    what = f"dpolab config from-{tool}"
    if conversion.unmapped:
        print(
            f"{what}: {len(conversion.unmapped)} key(s) not mapped (the '# not mapped' lines)",
            file=sys.stderr,
        )
    try:
        config_from_dict(conversion.values, stage=conversion.command)
    except DpolabError as err:
        print(f"{what}: before it runs, fix: {err}", file=sys.stderr)
    return 0
