"""One error contract for every console script.

A mistake the user can fix (a missing path, an unknown preset, a bad argument, a damaged file) is
raised as :class:`UsageError` and printed as one line, ``<prog>: error: <what is wrong and what to
do>``, with exit status 2; a traceback is shown only with ``--verbose`` or for a real bug. Ctrl-C
ends a command with status 130 and one line (plus how to continue, where the command can).

Every console script's ``main(argv=None)`` is wrapped by :func:`cli_main`, so calling ``main([...])``
in a test takes the same path as the installed command. Parsers use :class:`HelpFormatter` (through
:func:`finish_parser`), which shows every flag's default in ``--help``.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Exceptions that, escaping a command, are the user's mistake rather than a bug: a path that is
# not there or not what it should be. Anything else keeps its traceback (a real bug).
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


class UsageError(Exception):
    """A user's mistake: one line naming what is wrong and what to do; the command exits with 2."""


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "(no message)"


def _path_message(err: OSError) -> str:
    """'[Errno 2] No such file or directory: x' -> 'x: no such file or directory'."""
    if err.filename is not None and err.strerror:
        what = err.strerror[0].lower() + err.strerror[1:]
        return f"{err.filename}: {what}"
    return str(err)


def is_verbose(argv: Optional[Sequence[str]]) -> bool:
    args = sys.argv[1:] if argv is None else list(argv)
    return "--verbose" in args or os.environ.get("CHATSPOT_VERBOSE", "") not in ("", "0")


def run_cli(prog: str, body: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None,
            *, interrupt_hint: str = "") -> int:
    """Run ``body(argv)`` under the error contract; returns the exit status.

    UsageError and path errors -> ``<prog>: error: ...`` (one line), 2; KeyboardInterrupt -> 130.
    With ``--verbose`` on the command line (or CHATSPOT_VERBOSE=1) the traceback is printed first.
    """
    verbose = is_verbose(argv)
    try:
        return body(argv)
    except (UsageError, *_PATH_ERRORS) as err:
        if verbose:
            traceback.print_exc()
        message = _path_message(err) if isinstance(err, OSError) else str(err)
        print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        hint = f"; {interrupt_hint}" if interrupt_hint else ""
        print(f"{prog}: interrupted (Ctrl-C){hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


def cli_main(prog: str, *, interrupt_hint: str = "") -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator for a console script's ``main(argv=None) -> int``: the error contract of :func:`run_cli`."""

    def wrap(body: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(body)
        def main(argv: Optional[Sequence[str]] = None) -> int:
            return run_cli(prog, body, argv, interrupt_hint=interrupt_hint)

        main.unwrapped = body  # type: ignore[attr-defined]
        return main

    return wrap


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends ``(default: X)`` to every flag whose help does not
    already name its default (None, False and empty lists are not shown: the help says what they mean)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or not action.option_strings
                or default is None or default is False or default == argparse.SUPPRESS or default == []):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` and all its sub-command parsers the :class:`HelpFormatter`; returns it."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:  # noqa: SLF001 (argparse keeps sub-parsers only here)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                finish_parser(sub)
    return parser


def all_parsers(parser: argparse.ArgumentParser, name: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    """``parser`` and every sub-command parser below it, with their command names (for tests and docs)."""
    found = [(name or parser.prog, parser)]
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub_name, sub in action.choices.items():
                found += all_parsers(sub, f"{name or parser.prog} {sub_name}")
    return found


def existing_path(path: str | Path, flag: str, *, kind: str = "any", hint: str = "") -> Path:
    """``path`` as a Path when it exists (``kind``: "file", "dir" or "any"); UsageError naming ``flag`` otherwise."""
    p = Path(path).expanduser()
    tail = f"; {hint}" if hint else ""
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such {'folder' if kind == 'dir' else 'file'}{tail}")
    if kind == "file" and p.is_dir():
        raise UsageError(f"{flag} {path} is a folder; {hint or 'give a file'}")
    if kind == "dir" and not p.is_dir():
        raise UsageError(f"{flag} {path} is a file; {hint or 'give a folder'}")
    return p


def writable_folder(path: str | Path, flag: str = "--out", *, overwrite: bool = False,
                    outputs: Sequence[str] = ()) -> Path:
    """A folder a command may write into: refuses a non-empty one unless ``overwrite``.

    With ``overwrite``, the command's own ``outputs`` (names inside the folder) are removed first so
    the new run's files never sit beside an older run's; other files are left alone.
    """
    import shutil

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{flag} {path} is not empty; choose an empty or new folder, "
                             f"or pass --overwrite to replace what is there")
        for name in outputs:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    return out
