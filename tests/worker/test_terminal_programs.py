"""The allowlist, the environment and the working directory of terminal programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayline.worker.settings import WorkerSettings
from relayline.worker.terminals.environment import CwdNotAllowed, resolve_cwd, terminal_env
from relayline.worker.terminals.programs import ProgramsError, parse_programs


def test_entries_are_split_like_a_shell_would() -> None:
    programs = parse_programs(
        "shell=/bin/bash -l; agent=/usr/local/bin/some-cli --flag 'two words' \"a;b\";"
        "  top=top -d 1 ;"
    )
    assert programs == {
        "shell": ("/bin/bash", "-l"),
        "agent": ("/usr/local/bin/some-cli", "--flag", "two words", "a;b"),
        "top": ("top", "-d", "1"),
    }
    assert parse_programs("") == {}
    assert parse_programs("x= /bin/true") == {"x": ("/bin/true",)}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/bin/bash", "is not name=command"),
        ("Shell=/bin/bash", "is not name=command"),
        ("a=/bin/sh; a=/bin/bash", "given twice"),
        ("a=", "has no command"),
        ("a=/bin/sh -c 'unclosed", "No closing quotation"),
    ],
)
def test_a_bad_allowlist_is_refused_naming_the_entry(value: str, message: str) -> None:
    with pytest.raises(ProgramsError, match=message):
        parse_programs(value)
    with pytest.raises(ValueError, match=message):
        WorkerSettings(_env_file=None, terminal_programs=value)


def test_the_environment_carries_no_secret_of_the_worker() -> None:
    env = terminal_env(
        {
            "PATH": "/usr/bin",
            "HOME": "/home/w",
            "LANG": "C.UTF-8",
            "RELAYLINE_WORKER_SECRET": "s",
            "RELAYLINE_RELAY_URL": "http://relay",
            "OPENAI_API_KEY": "k",
            "github_token": "t",
            "DB_PASSWORD": "p",
            "AWS_SECRET_ACCESS_KEY": "a",
            "SOME_CREDENTIALS": "c",
            "TERM": "dumb",
        }
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/w",
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
    }


def test_the_working_directory_stays_inside_the_roots(tmp_path: Path) -> None:
    first, second, outside = tmp_path / "a", tmp_path / "b", tmp_path / "outside"
    for folder in (first, second, outside, first / "sub"):
        folder.mkdir()
    (first / "file").write_text("x")
    (first / "escape").symlink_to(outside)
    roots = [first, second]
    assert resolve_cwd(roots, None) == first.resolve()
    assert resolve_cwd(roots, "sub") == (first / "sub").resolve()
    assert resolve_cwd(roots, str(second)) == second.resolve()
    for asked in (str(outside), "../outside", "escape", "file", "missing", "/etc", "a\x00b"):
        with pytest.raises(CwdNotAllowed):
            resolve_cwd(roots, asked)
