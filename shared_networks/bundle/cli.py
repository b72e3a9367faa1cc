# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Command-line safety for ``python -m monai.bundle run ...``, called as the first ``initialize`` step of a config:

- a misspelt override (``--epoch 1`` for ``--epochs``) is an error naming the closest config ids, where MONAI would
  silently add a new, unused id and train 1000 epochs;
- a lowercase boolean (``--finetune false``) is an error asking for ``False``: MONAI's command line (python-fire)
  turns only ``True`` / ``False`` into booleans and passes ``false`` on as text, which every ``$not @finetune`` or
  ``if`` of a config reads as true (``_disabled_``, which MONAI itself parses from text, is left alone);
- when the run fails on bad input (a data, checkpoint or argument error raised with its own message by this
  package), the last lines printed are that message, not the end of a 70-360 line MONAI traceback whose last line is
  "Failed to evaluate ConfigExpression". The full traceback stays one environment variable away.

Nothing happens outside ``monai.bundle``'s command line (``monai.bundle.load``, MONAI Label, tests).
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from types import TracebackType

__all__ = [
    "FULL_TRACEBACK_ENV_VAR", "RUN_ARGUMENTS", "check_command_line", "error_summary", "text_boolean_overrides",
    "unknown_overrides",
]

logger = logging.getLogger(__name__)

#: Set to 1 to see MONAI's whole traceback for input errors too.
FULL_TRACEBACK_ENV_VAR = "SHARED_NETWORKS_FULL_TRACEBACK"
#: Arguments of ``monai.bundle run`` itself and the settings its ``--tracking`` adds; all others are config ids.
RUN_ARGUMENTS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
     "workflow_type", "tracking_uri", "experiment_name", "run_name", "save_execute_config"}
)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# exceptions raised on purpose for bad input: their message is the explanation
_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError)


def _cli_arguments(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``run`` when ``argv`` is a ``monai.bundle`` command line, else None."""
    if not argv or os.path.join("monai", "bundle") not in os.path.abspath(argv[0]):
        return None
    args = list(argv[1:])
    return args[1:] if args and args[0] == "run" else None


def _override_ids(args: Sequence[str]) -> dict[str, str]:
    """``--id value`` and ``--id=value`` pairs of a command line (the first word after ``run`` may be a run id)."""
    overrides = {}
    index = 0
    while index < len(args):
        word = args[index]
        if word.startswith("--") and len(word) > 2:
            key, has_value, value = word[2:].partition("=")
            if not has_value and index + 1 < len(args) and not args[index + 1].startswith("--"):
                value = args[index + 1]
                index += 1
            overrides[key.replace("-", "_") if key.replace("-", "_") in RUN_ARGUMENTS else key] = value
        index += 1
    return overrides


def _all_ids(config: object, prefix: str = "") -> list[str]:
    ids = []
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return ids
    for key, value in items:
        full = f"{prefix}#{key}" if prefix else str(key)
        ids.append(full)
        ids.extend(_all_ids(value, full))
    return ids


def unknown_overrides(config_files: Sequence[str], override_ids: Sequence[str]) -> dict[str, list[str]]:
    """
    The override ids that the config files do not define, each with up to three close ids (``difflib``).

    A top-level id must exist. A nested id may add a key under an existing entry (``--network_def#d_state 8`` sets a
    constructor argument the config leaves at its default, ``--train#handlers#0#_disabled_ true``), so it is known
    when its parent exists.
    """
    from monai.bundle import ConfigParser

    known = set(_all_ids(ConfigParser.load_config_files(list(config_files))))
    unknown = {}
    for override in override_ids:
        parent = override.rpartition("#")[0]
        if override in RUN_ARGUMENTS or override in known or (parent and parent in known):
            continue
        unknown[override] = difflib.get_close_matches(override, sorted(known), n=3, cutoff=0.6)
    return unknown


def error_summary(error: BaseException) -> tuple[BaseException, str]:
    """
    The error to report (past MONAI's "Failed to evaluate" wrappers) and a one-paragraph summary: the outermost
    exception of the chain raised by this package, whose message names the file and what was expected (not the
    low-level cause it was raised from, e.g. a ``zlib.error``); else the innermost cause.
    """
    chain, seen = [error], {id(error)}
    while True:
        last = chain[-1]
        cause = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if cause is None or id(cause) in seen:
            break
        chain.append(cause)
        seen.add(id(cause))
    root = next((e for e in chain if _raised_by_this_package(e)), chain[-1])
    message = str(root).strip() or repr(root)
    return root, f"{type(root).__name__}: {message}"


def _raised_by_this_package(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR)


def _excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    root, summary = error_summary(error)
    full = os.environ.get(FULL_TRACEBACK_ENV_VAR, "") not in ("", "0")
    if full or not (isinstance(root, _INPUT_ERRORS) and _raised_by_this_package(root)):
        sys.__excepthook__(kind, error, tb)
    rule = "=" * 100
    hint = "" if full else f"\n(the whole traceback: {FULL_TRACEBACK_ENV_VAR}=1)"
    print(f"{rule}\nThe run stopped: {summary}{hint}\n{rule}", file=sys.stderr)


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """
    For a ``python -m monai.bundle run`` command line: refuse override ids that no config file defines (with the
    closest ids as suggestions) and lowercase booleans, and install the short error summary. Does nothing for other
    callers.

    Raises:
        ValueError: an override id is not in any config file, or its value is ``true`` / ``false`` in lowercase.
    """
    args = _cli_arguments(sys.argv if argv is None else argv)
    if args is None:
        return
    sys.excepthook = _excepthook
    overrides = _override_ids(args)
    text_booleans = text_boolean_overrides(overrides)
    if text_booleans:
        given = "; ".join(f"--{name} {value}" for name, value in text_booleans.items())
        fixed = " ".join(f"--{name} {value.strip().capitalize()}" for name, value in text_booleans.items())
        raise ValueError(
            f"{given}: MONAI's command line (python-fire) makes booleans only of True and False and passes lowercase "
            f"'true' / 'false' on as text, and any non-empty text counts as true; write {fixed}."
        )

    config_files = overrides.get("config_file")
    if not config_files:  # given through --args_file: nothing to compare with here
        return
    files = _as_files(config_files)
    unknown = unknown_overrides(files, list(overrides))
    if unknown:
        lines = [f"--{name}" + (f" (did you mean {', '.join('--' + s for s in close)}?)" if close else "")
                 for name, close in unknown.items()]
        raise ValueError(
            "unknown config id(s) on the command line: " + "; ".join(lines) + ". Every --<id> must name an entry of "
            f"the config files {files} (nested keys are joined with '#', e.g. --network_def#mode)."
        )


def text_boolean_overrides(overrides: dict[str, str]) -> dict[str, str]:
    """The overrides whose value python-fire would pass on as the text ``true`` / ``false`` (any case but ``True`` /
    ``False``, which it turns into booleans); ``_disabled_`` keys are not included, MONAI parses those from text."""
    return {
        name: value for name, value in overrides.items()
        if name not in RUN_ARGUMENTS and not name.endswith("_disabled_")
        and value.strip().lower() in ("true", "false") and value.strip() not in ("True", "False")
    }


def _as_files(config_files: str) -> list[str]:
    """``--config_file`` as MONAI reads it: one path, a comma-separated list, or a Python-style list literal."""
    text = config_files.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part.strip().strip("'\"") for part in text.split(",") if part.strip()]
