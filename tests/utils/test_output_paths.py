"""Output paths are checked when the command line is parsed: every sub-command's --out (and report's
--markdown) is one-line rejected, exit 2, before any work, when nothing can be written there."""

import argparse

import pytest

from pyramidal_wan.cli import build_parser, main
from pyramidal_wan.cli.options import output_path
from pyramidal_wan.utils.io import unwritable_reason


def _commands(parser: argparse.ArgumentParser, prefix=()):
    """(command words, parser) of every leaf sub-command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _commands(sub, (*prefix, name))


def test_every_output_option_is_checked_at_parse_time():
    outputs = {
        (words, option)
        for words, parser in _commands(build_parser())
        for action in parser._actions
        for option in action.option_strings
        if option in ("--out", "--markdown") and action.type is not output_path
    }
    assert outputs == set()  # each one takes type=output_path


def test_unwritable_outputs_are_one_line_errors_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    for words, parser in _commands(build_parser()):
        if any("--out" in action.option_strings for action in parser._actions):
            assert main([*words, "--out", str(tmp_path / "file" / "out")]) == 2
            err = capsys.readouterr().err.strip()
            assert "file is a file, not a folder; choose another path" in err, words
            assert len(err.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_unwritable_reason(tmp_path):
    assert unwritable_reason(tmp_path / "a" / "b" / "c.json") is None  # missing parents are made later
    (tmp_path / "f").write_text("")
    assert unwritable_reason(tmp_path / "f" / "x") == f"{tmp_path / 'f'} is a file, not a folder"
    assert "cannot write in /proc" in unwritable_reason("/proc/pyramidal-wan/out.json")
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]  # the probe leaves nothing behind
    with pytest.raises(argparse.ArgumentTypeError, match="choose another path"):
        output_path(str(tmp_path / "f" / "x"))
