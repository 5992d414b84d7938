"""Print the requirements of ``pyproject.toml``'s base dependencies plus the named extras.

The Docker build runs this on ``pyproject.toml`` alone, before the source is copied, so that the
dependency layer is rebuilt only when the dependency list changes; ``pyproject.toml`` stays the
single source of truth for what each image installs. Standard library only (it runs in a bare
image).

Usage: ``python extras_requirements.py [--pyproject PATH] EXTRA [EXTRA ...]``
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Base dependencies followed by each extra's, in file order, without duplicates.

    Raises ``KeyError`` naming the file and the extra when an extra does not exist.
    """
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    out = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise KeyError(
                f"{pyproject}: [project.optional-dependencies] has no extra {extra!r} "
                f"(known: {', '.join(sorted(optional))})"
            )
        out.extend(optional[extra])
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("extras", nargs="+")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extras)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
