"""Every flag of every console script has help text, and --help shows its default (one place: the parser)."""
from __future__ import annotations

import argparse
import importlib

import pytest

from chatspot_ros.cli.errors import HelpFormatter, all_parsers

from test_bad_inputs import MODULES  # noqa: E402 (test/cli is on sys.path through pytest's rootdir)

# The console scripts of the other issues (#22 studio, #23 replay/publish) follow the same rules.
OTHERS = {"chatspot-replay": "chatspot_ros.cli.replay", "chatspot-publish": "chatspot_ros.cli.publish",
          "chatspot-studio": "chatspot_ros.cli.studio"}
ALL = {**MODULES, **OTHERS}
SCRIPTS = sorted(ALL)


class _Captured(Exception):
    pass


def _parser_of(prog: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser main() builds, caught at parse_args (some commands build it inside main)."""
    seen: list[argparse.ArgumentParser] = []

    def capture(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        seen.append(self)
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    main = importlib.import_module(ALL[prog]).main
    with pytest.raises(_Captured):
        main.unwrapped(["--help"])
    return seen[0]


@pytest.mark.parametrize("prog", SCRIPTS)
def test_every_flag_has_help_and_shows_its_default(prog: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = _parser_of(prog, monkeypatch)
    missing, no_default = [], []
    for name, p in all_parsers(parser):
        if prog in MODULES:
            assert issubclass(p.formatter_class, HelpFormatter), f"{name}: parser not finished (finish_parser)"
        formatter = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = f"{name} {action.option_strings[-1]}"
            if not (action.help or "").strip():
                missing.append(flag)
            elif (action.default is not None and action.default is not False and action.default != []
                  and action.default != argparse.SUPPRESS and not action.required):
                shown = formatter._get_help_string(action)
                if "default" not in shown.lower():
                    no_default.append(flag)
    assert not missing, f"flags without help: {missing}"
    assert not no_default, f"flags whose --help hides the default: {no_default}"


def test_bench_help_gives_the_concurrency_it_uses(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The issue's finding: chatspot-bench --help said 8 while the bench sends 16 requests at once."""
    from chatspot_ros.cli.bench import build_parser

    parser = build_parser()
    assert parser.parse_args([]).server_concurrency == 16
    text = " ".join(parser.format_help().split())
    assert "requests in flight at once (default: 16)" in text


def test_train_help_documents_the_smoke_preset() -> None:
    from chatspot_ros.cli.train import _parser

    text = " ".join(_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "smoke" in text and "default: 1000" in text  # --steps shows TrainConfig's default
    assert "--threads THREADS torch CPU threads (0: one per core) (default: 0)" in text  # a 0 default is shown
