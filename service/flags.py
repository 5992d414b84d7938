"""Command-line flags for settings: one definition shared by ``maskx serve``, ``maskx predict``
and ``maskx bench service``.

Every flag is a :class:`~service.settings.Settings` field: its name is the field's with dashes
(``max_batch_size`` → ``--max-batch-size``; ``model_path`` is ``--model``), its help is the
field's description plus its ``MASKX_`` variable, its choices come from the field's ``Literal``
type, booleans get ``--x/--no-x``. Values are validated by ``Settings`` itself, so a flag and its
environment variable accept exactly the same values. Adding a setting adds its flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args, get_origin

from service.settings import Settings

# Settings that are not flags: a secret belongs in the environment, not in `ps` output.
NOT_FLAGS = frozenset({"api_key"})
_FLAG_NAMES = {"model_path": "--model"}

SERVE_FLAGS: tuple[str, ...] = tuple(n for n in Settings.model_fields if n not in NOT_FLAGS)
# Request defaults and the runtime: what an offline run over files needs.
PREDICT_FLAGS = (
    "model_path",
    "providers",
    "allow_cpu_fallback",
    "score_threshold",
    "mask_threshold",
    "max_detections",
)
# What `maskx bench service` passes on to the server it starts.
BENCH_FLAGS = ("providers", "max_batch_size", "max_batch_delay_ms", "ort_spinning")


def flag_name(setting: str) -> str:
    return _FLAG_NAMES.get(setting, "--" + setting.replace("_", "-"))


def add_setting_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str],
    *,
    required: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add a flag for each setting in ``names``; unset flags stay ``None`` (the environment or
    the setting's default applies) unless ``defaults`` gives the caller's own default."""
    required = set(required)
    defaults = dict(defaults or {})
    for name in names:
        field = Settings.model_fields[name]
        env = "MASKX_" + name.upper()
        kwargs: dict[str, Any] = {"dest": name, "default": defaults.get(name)}
        help_text = f"{field.description or name} ({env})"
        if name in defaults:
            help_text += f" (default here: {defaults[name]})"
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = name.upper()
            if get_origin(field.annotation) is Literal:
                kwargs["choices"] = get_args(field.annotation)
        parser.add_argument(flag_name(name), help=help_text, required=name in required, **kwargs)


def setting_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The settings given on the command line (flags left unset are absent)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def settings_from_args(
    args: argparse.Namespace, names: Iterable[str] = SERVE_FLAGS, **fixed: Any
) -> Settings:
    """``Settings`` from the environment, then ``fixed``, then the given flags (they win).

    Raises ``pydantic.ValidationError`` naming the setting at fault.
    """
    return Settings(**(fixed | setting_values(args, names)))


def settings_to_argv(values: Mapping[str, Any]) -> list[str]:
    """Flags that give ``values`` (setting name → value) to another ``maskx`` command."""
    argv: list[str] = []
    for name, value in values.items():
        if isinstance(value, bool):
            argv.append(flag_name(name) if value else "--no-" + flag_name(name)[2:])
        else:
            argv += [flag_name(name), str(value)]
    return argv
