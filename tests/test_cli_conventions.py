"""CLI conventions: shutdown without a daemon, -v after the subcommand, logs, completion,
clipped echoes of user input, the first-run hint."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CONFIG = """\
[profiles.foo]
region = "us-east-1"

[profiles.foo.bastion]
instance_id = "i-0123456789abcdef0"
user = "u"
"""


@pytest.fixture
def home() -> Path:
    # short: the control socket would live below it, and AF_UNIX paths are limited
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    (path / "config.toml").write_text(CONFIG)
    return path


def child_env(home: Path, config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_TRAY_", "AWS_"))}
    env.update(BASTION_TRAY_HOME=str(home),
               BASTION_TRAY_CONFIG=str(config or home / "config.toml"),
               BASTION_TRAY_LOOPBACK_ONLY="1", PYTHONUNBUFFERED="1")
    return env


def cli(home: Path, *args: str, config: Path | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion_tray", *args],
                          env=child_env(home, config), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def in_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("BASTION_TRAY_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BASTION_TRAY_HOME", str(home))
    monkeypatch.setenv("BASTION_TRAY_CONFIG", str(home / "config.toml"))
    return home


# --- 1. shutdown with no daemon ------------------------------------------------------------


def test_shutdown_without_daemon_starts_none(home: Path) -> None:
    proc = cli(home, "shutdown")
    assert proc.returncode == 0, proc.stderr
    assert "no daemon" in proc.stdout + proc.stderr
    run = home / "run"
    assert not (run / "daemon.pid").exists()
    assert not (run / "daemon.sock").exists()


# --- 2. -v after the subcommand ------------------------------------------------------------


def test_verbose_after_the_subcommand() -> None:
    from bastion_tray.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["status", "-v"])
    assert args.verbose == 0 and args.verbose_sub == 1
    args = parser.parse_args(["-v", "status", "-vv"])
    assert args.verbose + args.verbose_sub == 3
    args = parser.parse_args(["status"])
    assert args.verbose + args.verbose_sub == 0


def test_main_sums_both_verbose_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion_tray.cli import logs, main

    seen: list[int] = []
    monkeypatch.setattr(logs, "configure_logging", lambda level, **_: seen.append(level))
    parser = main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["status"].set_defaults(run=lambda args: 0)
    monkeypatch.setattr(main, "build_parser", lambda: parser)
    assert main.main(["-v", "status", "-vv"]) == 0
    assert seen == [3]


def test_help_lists_every_subcommand_with_a_help_line() -> None:
    from bastion_tray.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name in sub.choices:
        assert helps.get(name), f"{name} has no help line"
    text = parser.format_help()
    for name in sub.choices:
        assert name in text


# --- 3. logs -------------------------------------------------------------------------------


def write_log(home: Path, text: str) -> Path:
    log = home / "log" / "daemon.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(text)
    return log


def test_logs_prints_the_last_lines(in_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    write_log(in_home, "one\ntwo\nthree\nfour\n")
    assert main(["logs", "-n", "2"]) == 0
    assert capsys.readouterr().out == "three\nfour\n"
    assert main(["logs"]) == 0
    assert capsys.readouterr().out == "one\ntwo\nthree\nfour\n"
    assert main(["logs", "-n", "0"]) == 0
    assert capsys.readouterr().out == ""
    assert not (in_home / "run" / "daemon.sock").exists()


def test_logs_tail_of_a_large_file_without_final_newline(tmp_path: Path) -> None:
    from bastion_tray.cli.commands.logs import tail

    log = tmp_path / "daemon.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(50_000)) + b"partial")
    with open(log, "rb") as f:
        assert tail(f, 3) == b"line 49998\nline 49999\npartial"
        assert f.tell() == log.stat().st_size


def test_logs_without_a_log_file(in_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    assert main(["logs", "-f"]) == 0
    out = capsys.readouterr().out
    assert str(in_home / "log" / "daemon.log") in out
    assert not (in_home / "run").exists()


def test_logs_follow_reopens_a_replaced_or_truncated_file(tmp_path: Path) -> None:
    import io

    from bastion_tray.cli.commands.logs import follow

    log = tmp_path / "daemon.log"
    log.write_text("old\n")
    out = io.StringIO()
    steps: list[Callable[[], object]] = [
        lambda: log.open("a").write("appended\n"),
        lambda: (log.rename(tmp_path / "daemon.log.1"), log.write_text("rotated\n")),
        lambda: log.write_text("t\n"),  # same inode, shorter than what was read: truncated
        lambda: log.unlink(),
        lambda: log.write_text("back\n"),
    ]

    def sleep(seconds: float) -> None:
        if not steps:
            raise KeyboardInterrupt
        steps.pop(0)()

    with open(log, "rb") as f:
        f.seek(0, 2)
        with pytest.raises(KeyboardInterrupt):
            follow(log, f, out, sleep=sleep)
    assert out.getvalue() == "appended\nrotated\nt\nback\n"


def test_logs_follow_stops_on_ctrl_c(in_home: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.commands import logs
    from bastion_tray.cli.main import main

    write_log(in_home, "a\n")

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    real = logs.follow
    monkeypatch.setattr(logs, "follow", lambda path, f, out: real(path, f, out, interrupted))
    assert main(["logs", "-f"]) == 0  # not main()'s 130: Ctrl-C is how -f ends
    assert capsys.readouterr().out == "a\n"


def test_logs_follow_in_a_subprocess(home: Path) -> None:
    import queue
    import threading
    import time

    log = write_log(home, "first\n")
    proc = subprocess.Popen([sys.executable, "-m", "bastion_tray", "logs", "-f"],
                            env=child_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert lines.get(timeout=20) == "first\n"
        with log.open("a") as f:
            f.write("second\n")
        deadline = time.monotonic() + 20
        assert lines.get(timeout=max(0.1, deadline - time.monotonic())) == "second\n"
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not (home / "run" / "daemon.sock").exists()


# --- 4. completion -------------------------------------------------------------------------


def test_bash_completion_is_valid_and_completes_subcommands(
        in_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from bastion_tray.cli.main import main

    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "status" in script
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    path = tmp_path / "bastion-tray.bash"
    path.write_text(script)
    subprocess.run([bash, "-n", str(path)], check=True, timeout=30)
    probe = ('source "$1"; COMP_WORDS=(bastion-tray st); COMP_CWORD=1; '
             'COMP_LINE="bastion-tray st"; COMP_POINT=${#COMP_LINE}; _shtab_bastion_tray; '
             'printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run([bash, "-c", probe, "probe", str(path)], capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    assert "status" in out and "stop" in out


def test_zsh_completion(in_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef") and "logs" in script


def test_completion_of_an_unknown_shell_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["completion", "cmd.exe"])
    assert exc.value.code == 2


# --- 5. errors that echo user input clip it -------------------------------------------------


def test_clip() -> None:
    from bastion_tray.core.text import clip

    assert clip("abc") == "abc"
    assert clip("x" * 80) == "x" * 80
    assert clip("x" * 81) == "x" * 80 + "… (81 chars)"
    assert clip("abcdef", 3) == "abc… (6 chars)"


def test_a_huge_unknown_subcommand_is_clipped(in_home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["status-" + "x" * 10_000_000])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err) < 1000 and "chars)" in err


def test_a_short_unknown_subcommand_still_lists_the_choices(
        capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    with pytest.raises(SystemExit):
        main(["statu"])
    err = capsys.readouterr().err
    assert "'statu'" in err and "'completion'" in err


def test_a_huge_subcommand_option_is_clipped(in_home: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["logs", "-n", "9" * 1_000_000 + "z"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err) < 1000


def test_a_huge_unknown_profile_is_clipped(in_home: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    assert main(["trust", "p" * 10_000_000]) == 2
    err = capsys.readouterr().err
    assert len(err) < 1000 and "unknown profile" in err and "foo" in err


def test_a_huge_unknown_forward_or_host_is_clipped(tmp_path: Path) -> None:
    from bastion_tray.core.config import load_config
    from bastion_tray.core.errors import UsageError

    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    profile = load_config(path).profile("foo")
    for lookup in (profile.forward, profile.host):
        with pytest.raises(UsageError) as exc:
            lookup("f" * 1_000_000)
        assert len(str(exc.value)) < 1000


# --- 6. first run ---------------------------------------------------------------------------


def test_a_missing_config_says_to_run_init(home: Path) -> None:
    missing = home / "nowhere" / "config.toml"
    proc = cli(home, "status", config=missing)
    assert proc.returncode == 2, proc.stderr
    assert "bastion-tray init" in proc.stderr and "--config PATH" in proc.stderr
    assert str(missing) in proc.stderr
    assert not (home / "run" / "daemon.sock").exists()
