"""The CLI edge: logging set-up, JSON output, and errors turned into one line + exit code."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

from common.errors import AssistError, UsageError, is_path_fault, path_error

log = logging.getLogger(__name__)

# The activation code is a secret: read from here or stdin, it never shows in `ps`.
ACTIVATION_CODE_ENV = "ALIYUN_ASSIST_ACTIVATION_CODE"


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every command takes: --debug and -v/--verbose.

    The default is SUPPRESS so that the same option on a parent parser and a subcommand
    (`assist-server --debug migrate`) is not reset by the subcommand's default; read them with
    getattr(args, "debug", False).
    """
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log progress to stderr",
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (when it has a meaningful one) and keeps examples."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS, [], "")
        if shown and "%(default)" not in text and (action.option_strings or action.nargs == "?"):
            text += " (default: %(default)s)"
        return text


def finish_parser(
    parser: argparse.ArgumentParser, examples: Mapping[str, str] | None = None, path: str = ""
) -> None:
    """Give a command and all its subcommands the same help shape (docs/cli.md).

    Every level takes --debug and -v (before or after the subcommand), shows option defaults,
    has a one-line description, and ends with an example from `examples`, keyed by the
    subcommand path ("" for the command itself, "accesskey create" for a nested one).
    """
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if action.help is None and action.option_strings == ["--json"]:
            action.help = "print the result as JSON on stdout"
    if "--debug" not in parser._option_string_actions:
        add_common_options(parser)
    example = (examples or {}).get(path)
    if example and not parser.epilog:
        parser.epilog = "example:\n  " + example.replace("\n", "\n  ")
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, child in action.choices.items():
            if child.description is None and helps.get(name):
                child.description = helps[name]
            finish_parser(child, examples, f"{path} {name}".strip())


def subcommand_paths(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (subcommand path, parser) of a command, the command itself first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subcommand_paths(child, f"{path} {name}".strip())


def setup_logging(debug: bool = False, verbose: bool = False) -> None:
    """Log to stderr: warnings by default, info with -v, debug with --debug."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def print_json(value: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def format_error(prog: str, exc: AssistError) -> str:
    """One line: what went wrong and what to do."""
    line = f"{prog}: error: {one_line(exc.message)}"
    if exc.hint:
        line += f" — {one_line(exc.hint)}"
    return line + f" [{exc.reference}]"


def one_line(text: str) -> str:
    """Collapse whitespace (a tool's multi-line message) so an error stays one line."""
    return " ".join(text.split())


def run_cli(
    prog: str,
    parser: argparse.ArgumentParser,
    dispatch: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
    examples: Mapping[str, str] | None = None,
) -> int:
    """Parse argv, run `dispatch`, and map every failure to one stderr line and an exit code."""
    finish_parser(parser, examples)
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    setup_logging(debug, bool(getattr(args, "verbose", False)))
    stop_on_term = (
        interrupts_as_exceptions()
        if threading.current_thread() is threading.main_thread()
        else contextlib.nullcontext()
    )
    try:
        with stop_on_term:  # a command with its own signal handling (serve, run) overrides this
            code = dispatch(args)
    except AssistError as exc:
        if debug:
            traceback.print_exc()
        print(format_error(prog, exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        exit_now_if_workers_linger(130)
        return 130
    except OSError as exc:
        if not is_path_fault(exc):
            return report_internal(prog, exc, debug)
        if debug:
            traceback.print_exc()
        error = explain_os_error(exc, args)
        print(format_error(prog, error), file=sys.stderr)
        return error.exit_code
    except Exception as exc:  # the last line of defence: never a bare traceback for users
        return report_internal(prog, exc, debug)
    return int(code or 0)


def exit_now_if_workers_linger(code: int) -> None:
    """After an interrupt, leave at once rather than wait for worker threads at exit.

    The main thread has unwound (locks released, nothing half-published); what is left are
    transfers that the next run resumes. Python would otherwise join them before exiting."""
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def report_internal(prog: str, exc: Exception, debug: bool) -> int:
    """A bug of ours: say so in one line (the traceback with --debug) and exit 1."""
    if debug:
        traceback.print_exc()
    print(
        f"{prog}: error: unexpected {type(exc).__name__}: {one_line(str(exc))} — rerun with --debug and "
        "report it [internal]",
        file=sys.stderr,
    )
    return 1


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so cleanup in `finally`/ExitStack runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def explain_os_error(exc: OSError, args: argparse.Namespace) -> AssistError:
    """A path fault (permission, read-only, a file in the way…) as an error naming path and option."""
    filename = os.fsdecode(exc.filename) if exc.filename is not None else None
    blocker = None
    if filename is not None and exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = find_file_in_the_way(filename)
    return path_error(exc, blocker=blocker, option=option_holding(args, filename))


def find_file_in_the_way(path: str) -> str | None:
    """The path itself or its nearest ancestor that exists and is not a directory, if any."""
    current = os.path.normpath(path)
    while True:
        if os.path.lexists(current) and not os.path.isdir(current):
            return current
        parent = os.path.dirname(current)
        if parent == current or not parent:
            return None
        current = parent


def option_holding(args: argparse.Namespace, path: str | None) -> str | None:
    """The --option whose value is `path`, one of its directories, or (failing that) under it."""
    if path is None:
        return None
    target = os.path.abspath(path)
    best: tuple[int, str] | None = None
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, (str, os.PathLike)):
                continue
            text = os.fsdecode(item)
            if not text or "://" in text:
                continue
            base = os.path.abspath(text)
            if target == base or is_under(target, base):
                score = len(base)  # the deepest option directory holding the path
            elif is_under(base, target) or is_temp_sibling(target, base):
                score = 0  # below the failing path, or its temporary sibling
            else:
                continue
            if best is None or score > best[0]:
                best = (score, "--" + name.replace("_", "-"))
    return best[1] if best else None


def is_under(path: str, directory: str) -> bool:
    """Whether absolute `path` lies below absolute `directory`."""
    return path.startswith(directory.rstrip(os.sep) + os.sep)


def is_temp_sibling(path: str, of: str) -> bool:
    """Whether `path` is a hidden temporary next to `of` (`.NAME.tmp…`, atomic writes)."""
    return os.path.dirname(path) == os.path.dirname(of) and os.path.basename(path).startswith(
        "." + os.path.basename(of)
    )


def check_region_option(
    region: str | None, configured: str = "", template: str | None = None
) -> None:
    """Refuse an unknown --region at once: install would save a typo and use it from then on.

    Known: the region table (common/regions.py, with the config's intranet template, which maps
    every region when it is the operator's own) and the region the config already names.
    """
    from common.regions import DEFAULT_TEMPLATE, default_table, region_url

    if region and region != configured:
        region_url(region, default_table(template or DEFAULT_TEMPLATE))


def check_trust_root_option(path: str | None) -> None:
    """A --trust-root must be a readable TUF root.json; say so naming the option, before any use."""
    if not path:
        return
    from common.errors import ConfigError

    hint = (
        "pass the repository's root.json (KEYDIR/root.json, or share/root.json of an agent payload)"
    )
    if not os.path.isfile(path):
        raise ConfigError(f"--trust-root {path}: no such file", hint=hint)
    from tuf.api.metadata import Metadata, Root

    try:
        Metadata[Root].from_file(path)
    except Exception as exc:  # tuf raises several deserialisation errors
        raise ConfigError(
            f"--trust-root {path} is not a TUF root.json ({type(exc).__name__})", hint=hint
        ) from exc


def read_activation_code(
    option: str | None, env: Mapping[str, str], stdin: IO[str] | None = None
) -> str:
    """The activation code: --activation-code, '-' for one line of stdin, else the environment."""
    if option == "-":
        code = (stdin or sys.stdin).readline().strip()
        source = "stdin"
    elif option:
        code, source = option, "--activation-code"
    else:
        code, source = env.get(ACTIVATION_CODE_ENV, "").strip(), f"${ACTIVATION_CODE_ENV}"
    if not code:
        raise UsageError(
            f"no activation code ({source} is empty)",
            hint=f"set {ACTIVATION_CODE_ENV}, or pass --activation-code - and write it to stdin",
        )
    return code
