"""`dpolab config example [dpo|dpop|idpo|ipo|mpo|orpo|simpo|sft]`: print a commented example config."""

from __future__ import annotations

from importlib import resources

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
