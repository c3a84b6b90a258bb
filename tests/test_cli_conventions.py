"""CLI conventions: shutdown without a daemon, -v after the subcommand, logs, completion,
clipped echoes of user input, the first-run hint."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
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
def home() -> Iterator[Path]:
    # short: the control socket would live below it, and AF_UNIX paths are limited
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    (path / "config.toml").write_text(CONFIG)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
    assert not (home / "log").exists()  # a spawned daemon would have opened its log there


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


def test_verbose_after_a_positional_and_before_the_global_options() -> None:
    from bastion_tray.cli.main import build_parser

    args = build_parser().parse_args(["--config", "x.toml", "-v", "up", "foo", "-vv"])
    assert (args.config, args.profile, args.verbose + args.verbose_sub) == ("x.toml", "foo", 3)
    args = build_parser().parse_args(["keep", "foo", "30m", "-v"])
    assert (args.duration, args.verbose_sub) == ("30m", 1)


def help_lines(text: str) -> dict[str, str]:
    """The COMMAND block of `--help`: each subcommand and its help, joined when wrapped (a
    long name puts its help on the next, more indented line)."""
    block = text.split("positional arguments:", 1)[1].split("\noptions:", 1)[0]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines()[2:]:  # skip the COMMAND line itself
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 4:
            name, _, help_text = line.strip().partition(" ")
            entries[name] = help_text.strip()
            current = name
        elif current is not None:
            entries[current] = (entries[current] + " " + line.strip()).strip()
    return entries


def test_help_lists_every_subcommand_with_a_help_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import build_parser, main

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps by the terminal's width
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    shown = help_lines(capsys.readouterr().out)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    registered = {a.dest for a in sub._choices_actions} | set(sub.choices)
    assert {"keep", "shutdown", "logs", "completion", "status"} <= registered
    for name in registered:
        assert shown.get(name), f"`bastion-tray --help` shows no help line for {name!r}"


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
        # rotated as RotatingFileHandler does: renamed away, a new file in its place
        log.rename(log.with_name("daemon.log.1"))
        log.write_text("third\n")
        assert lines.get(timeout=max(0.1, deadline - time.monotonic())) == "third\n"
        assert proc.poll() is None  # still following
        proc.send_signal(signal.SIGINT)  # Ctrl-C is how -f ends: exit 0, not 130
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
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


def test_fish_completion(in_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    assert main(["completion", "fish"]) == 0
    script = capsys.readouterr().out
    assert "complete -c bastion-tray" in script
    for name in ("status", "logs", "keep", "shutdown"):
        assert name in script


def test_completion_lists_the_profiles_of_the_config(
        in_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    (in_home / "config.toml").write_text(CONFIG + '[profiles.bar]\nregion = "x"\n')
    assert main(["completion", "--profiles"]) == 0
    assert capsys.readouterr().out == "bar\nfoo\n"  # bar has problems; its name still counts
    (in_home / "config.toml").unlink()
    assert main(["completion", "--profiles"]) == 0  # silent: it runs inside a prompt
    assert capsys.readouterr() == ("", "")


def test_bash_completion_completes_profile_names(tmp_path: Path, home: Path) -> None:
    import shutil

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    (home / "config.toml").write_text(CONFIG + '[profiles.bar]\nregion = "x"\n')
    script = cli(home, "completion", "bash").stdout
    # the script runs `bastion-tray completion --profiles`: this interpreter, under that name
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bastion-tray").write_text(f'#!/bin/sh\nexec {sys.executable} -m bastion_tray "$@"\n')
    (bindir / "bastion-tray").chmod(0o755)
    (tmp_path / "c.bash").write_text(script)
    env = child_env(home) | {"PATH": f"{bindir}:{os.environ.get('PATH', '')}",
                             "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def complete(*words: str) -> list[str]:
        probe = ('source "$1"; shift; COMP_WORDS=(bastion-tray "$@"); COMP_CWORD=$#; '
                 'COMP_LINE="bastion-tray $*"; COMP_POINT=${#COMP_LINE}; _shtab_bastion_tray; '
                 'printf "%s\\n" "${COMPREPLY[@]}"')
        return subprocess.run([bash, "-c", probe, "probe", str(tmp_path / "c.bash"), *words],
                              capture_output=True, text=True, timeout=60, env=env,
                              check=True).stdout.split()

    assert complete("up", "") == ["bar", "foo"]
    assert complete("keep", "f") == ["foo"]
    assert "foo" not in complete("init", "")  # init names a new profile


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


def test_a_huge_profile_for_stop_or_keep_is_clipped(in_home: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from bastion_tray.cli.main import main

    for argv in (["stop", "p" * 10_000_000], ["keep", "p" * 10_000_000, "5m"],
                 ["keep", "foo", "9" * 10_000_000]):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert len(err) < 1000 and "chars)" in err, argv[0]


@pytest.mark.parametrize("key, text", [
    ("instance_id", 'instance_id = "{big}"'),
    ("port", 'port = "{big}"'),
    ("host_key", 'host_key = "{big}"'),
    ("identity_file", 'identity_file = "{big}"'),
    ("backstop_role", 'backstop_role = "{big}"'),
    ("idle_timeout", 'idle_timeout = "{big}"'),
    ("auto_stop", 'auto_stop = "{big}"'),
    ("x" * 1_000_000, 'x' * 1_000_000 + ' = 1'),  # an unknown key, named by a megabyte
], ids=["instance_id", "port", "host_key", "identity_file", "backstop_role", "idle_timeout",
        "auto_stop", "unknown-key"])
def test_a_megabyte_value_in_the_config_is_clipped(home: Path, key: str, text: str) -> None:
    big = "z" * 1_000_000
    body = CONFIG.replace('instance_id = "i-0123456789abcdef0"\n', "")
    if key != "instance_id":
        body += 'instance_id = "i-0123456789abcdef0"\n'
    (home / "config.toml").write_text(body + text.replace("{big}", big) + "\n")
    proc = cli(home, "status")
    assert proc.returncode == 2, proc.stderr[:500]
    assert len(proc.stderr) < 1000, proc.stderr[:1000]
    assert str(home / "config.toml") in proc.stderr  # still names the file
    assert "[profiles.foo.bastion]" in proc.stderr  # and the table
    assert key[:20] in proc.stderr  # and the key
    assert "1000000 chars" in proc.stderr


def test_a_megabyte_profile_name_in_the_config_is_clipped(home: Path) -> None:
    name = "p" * 1_000_000
    (home / "config.toml").write_text(CONFIG.replace("foo", name) + 'junk = 1\n'
                                      f'[profiles.{name}.forwards.db]\nlocal_port = 0\n')
    proc = cli(home, "status")
    assert proc.returncode == 2
    assert len(proc.stderr) < 2000, proc.stderr[:2000]
    assert "junk" in proc.stderr and "local_port" in proc.stderr


# --- 7. keep speaks one unit style -------------------------------------------------------------


class FakeClient:
    def __init__(self, reply: dict[str, object]) -> None:
        self.reply = reply
        self.asked: list[tuple[str, dict[str, object]]] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def request(self, op: str, **args: object) -> dict[str, object]:
        self.asked.append((op, args))
        return self.reply


@pytest.mark.parametrize("argv, reply, printed", [
    (["5m"], {"stops_in_seconds": 299.4, "auto_stop": True}, "foo: kept running; stops in 5 min"),
    (["90m"], {"stops_in_seconds": 5400.0, "auto_stop": True},
     "foo: kept running; stops in 1 h 30 min"),
    ([], {"stops_in_seconds": 3599.9, "auto_stop": True}, "foo: kept running; stops in 1 h"),
    (["7d"], {"stops_in_seconds": 604799.0, "auto_stop": True},
     "foo: kept running; stops in 7 d"),
    (["45"], {"stops_in_seconds": 44.2, "auto_stop": True}, "foo: kept running; stops in 45 s"),
    (["2h"], {"stops_in_seconds": None, "auto_stop": True},
     "foo: kept running; in use now, stops no sooner than in 2 h"),
    (["2h"], {"stops_in_seconds": None, "auto_stop": False},
     "foo: kept running; auto-stop is off, it runs until you stop it"),
], ids=["5m", "90m", "default", "7d", "45s", "in-use", "auto-stop-off"])
def test_keep_prints_one_humanized_style(in_home: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], argv: list[str],
                                         reply: dict[str, object], printed: str) -> None:
    from bastion_tray.cli import session
    from bastion_tray.cli.main import main

    client = FakeClient(reply)
    monkeypatch.setattr(session, "connect", lambda config: client)
    assert main(["keep", "foo", *argv]) == 0
    assert capsys.readouterr().out == printed + "\n"
    assert client.asked[0][0] == "keep"


def test_keep_help_and_errors_use_the_same_units(
        in_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from bastion_tray.cli.main import main

    assert main(["keep", "foo", "8d"]) == 2
    err = capsys.readouterr().err
    assert "at most 7 d" in err
    with pytest.raises(SystemExit):
        main(["--help"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("keep"))
    assert "default 1 h, at most 7 d" in line
    assert not re.search(r"\d(h|d|m|s)\b", line), line  # no "1h" next to "7 d"


# --- 8. first run -----------------------------------------------------------------------------

CLIENT_COMMANDS = [
    ["status"], ["status", "--json"], ["up", "foo"], ["connect", "foo", "db"], ["stop", "foo"],
    ["keep", "foo"], ["trust", "foo"], ["ssh-config"], ["shell", "foo", "app"],
    ["proxy", "foo", "app", "22"], ["check-config"],
]


@pytest.mark.parametrize("argv", CLIENT_COMMANDS, ids=[" ".join(a) for a in CLIENT_COMMANDS])
def test_every_client_command_without_a_config_says_to_run_init(
        in_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    from bastion_tray.cli.main import main
    from bastion_tray.service import clientside, spawn

    def no_daemon(*args: object, **kwargs: object) -> object:
        raise AssertionError("a daemon was asked for before the config was read")

    monkeypatch.setattr(clientside, "connect", no_daemon)
    monkeypatch.setattr(spawn, "ensure_daemon", no_daemon)
    missing = in_home / "config.toml"
    missing.unlink()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"no config file at {missing}" in err
    assert "run `bastion-tray init` to create one, or pass --config PATH" in err


def test_the_default_config_path_missing_says_to_run_init(home: Path) -> None:
    env = child_env(home)
    del env["BASTION_TRAY_CONFIG"]
    proc = subprocess.run([sys.executable, "-m", "bastion_tray", "status"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"no config file at {home / 'config' / 'config.toml'} (chosen by default location)" \
        in proc.stderr
    assert "bastion-tray init" in proc.stderr
    assert not (home / "run" / "daemon.sock").exists()
