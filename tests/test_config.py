"""The configuration contract: what loads, and every way a file is rejected (table-driven)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bastion_tray.cli.main import main
from bastion_tray.core.config import load_config
from bastion_tray.core.durations import (
    KEEP_LIMIT,
    MAX_CONFIG_DURATION,
    MAX_CONFIG_WAIT,
    format_duration,
    parse_bounded_duration,
    parse_duration,
)
from bastion_tray.core.errors import ConfigError
from bastion_tray.core.paths import app_paths, config_path

GOOD = """
[settings]
idle_timeout = "45m"
warn_before = 90
terminal = ["xterm", "-e"]

[profiles.foo]
region = "ap-northeast-1"
aws_profile = "foo"

[profiles.foo.bastion]
name = "foo-bastion"
user = "ec2-user"
identity_file = "{key}"
port = 2222
idle_timeout = "4s"

[profiles.foo.hosts.appserver]
hostname = "10.0.0.115"

[profiles.foo.forwards.db]
local_port = 13306
remote_host = "foo.abcdefg.ap-northeast-1.rds.amazonaws.com"
remote_port = 3306
"""


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "foo.pem"
    path.write_text("not really a key\n")
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


def good(key: Path) -> str:
    return GOOD.replace("{key}", str(key))


def test_a_full_config_loads_with_defaults_and_inheritance(tmp_path: Path, key: Path) -> None:
    cfg = load_config(write(tmp_path, good(key)))
    foo = cfg.profile("foo")
    assert cfg.settings.idle_timeout == 45 * 60
    assert cfg.settings.warn_before == 90
    assert cfg.settings.terminal == ("xterm", "-e")
    assert foo.aws_profile == "foo"
    assert foo.bastion.name == "foo-bastion" and foo.bastion.instance_id is None
    assert foo.bastion.port == 2222 and foo.bastion.host == "auto"
    assert foo.bastion.idle_timeout == 4  # the bastion's own value beats [settings]
    assert foo.bastion.auto_stop is True
    app = foo.hosts["appserver"]
    assert (app.user, app.identity_file, app.port) == ("ec2-user", key, 22)  # from the bastion
    db = foo.forwards["db"]
    assert (db.bind, db.local_port, db.remote_port) == ("127.0.0.1", 13306, 3306)
    assert db.local == "127.0.0.1:13306"


def test_settings_idle_timeout_applies_when_the_bastion_has_none(tmp_path: Path, key: Path) -> None:
    cfg = load_config(write(tmp_path, good(key).replace('idle_timeout = "4s"\n', "")))
    assert cfg.profile("foo").bastion.idle_timeout == 45 * 60


def test_tilde_in_identity_file_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            key: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(write(tmp_path, good(key).replace(str(key), "~/foo.pem")))
    assert cfg.profile("foo").bastion.identity_file == key


def test_an_instance_id_instead_of_a_name(tmp_path: Path, key: Path) -> None:
    text = good(key).replace('name = "foo-bastion"', 'instance_id = "i-0123456789abcdef0"')
    assert load_config(write(tmp_path, text)).profile("foo").bastion.instance_id \
        == "i-0123456789abcdef0"


@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), (45, 45), ("500ms", 0.5),
    ("120", 120),
])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["2x", "", "m30", "-5", True, [1], "30 minutes"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (4, 59, 61, 1080, 3600, 5400)] == \
        ["4 s", "59 s", "1 min", "18 min", "1 h", "1 h 30 min"]
    assert [format_duration(s) for s in (86400, 90000, KEEP_LIMIT)] == ["1 d", "1 d 1 h", "7 d"]


@pytest.mark.parametrize(("seconds", "text"), [
    (float("inf"), "over 100 years"), (1e309, "over 100 years"), (3.6e23, "over 100 years"),
    (10**400, "over 100 years"), (float("nan"), "unknown"), (float("-inf"), "0 s"), (-5, "0 s"),
], ids=["inf", "1e309", "3.6e23", "10**400", "nan", "-inf", "-5"])
def test_format_duration_never_raises_on_absurd_input(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_documented_limits() -> None:
    assert KEEP_LIMIT == MAX_CONFIG_DURATION == 7 * 86400
    assert MAX_CONFIG_WAIT == 3600


# (value, what the message must contain besides "keep:" and the limit "7 d")
OUT_OF_RANGE = [
    ("99999999999999999999h", "'99999999999999999999h'"),  # issue 8: was 3.6e23 s, accepted
    ("8d", "'8d'"),
    (7 * 86400 + 1, "604801"),
    (10**400, "1000000000"),  # a JSON integer: compared, never turned into a float (overflow)
    (1e309, "inf"),  # what JSON's 1e309 becomes
    (float("inf"), "inf"),
    (float("nan"), "nan"),
    ("inf", "'inf'"),
    ("NaN", "'NaN'"),
    ("-5m", "'-5m'"),
    (-5, "-5"),
    (-0.5, "-0.5"),
    ("1e3", "'1e3'"),  # no exponents: "1e309" must not sneak in as text either
    ("²", "'²'"),  # a Unicode digit: str.isdigit() says yes, float() says no
    (True, "boolean"),
    (None, "None"),
    ([60], "[60]"),
]


@pytest.mark.parametrize(("value", "shown"), OUT_OF_RANGE, ids=[repr(v)[:24] for v, _ in
                                                                OUT_OF_RANGE])
def test_parse_bounded_duration_names_what_the_limit_and_the_value(value: object,
                                                                   shown: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_bounded_duration(value, maximum=KEEP_LIMIT, what="keep")
    message = str(info.value)
    assert message.startswith("keep: ") and "7 d" in message and shown in message
    assert len(message) < 200


@pytest.mark.parametrize(("value", "seconds"), [
    ("7d", 7 * 86400), (7 * 86400, 7 * 86400), ("0s", 0), (0, 0), ("1h", 3600), (0.5, 0.5),
])
def test_parse_bounded_duration_accepts_up_to_the_limit(value: object, seconds: float) -> None:
    assert parse_bounded_duration(value, maximum=KEEP_LIMIT, what="keep") == seconds


def test_a_huge_value_is_not_echoed_back_in_full() -> None:
    for value in ("9" * 10_000_000 + "h", ["x" * 10_000_000]):
        with pytest.raises(ValueError) as info:
            parse_bounded_duration(value, maximum=KEEP_LIMIT, what="keep")
        assert len(str(info.value)) < 250


def test_parse_duration_has_a_ceiling_even_without_a_limit() -> None:
    with pytest.raises(ValueError, match="at most 366 d"):
        parse_duration("99999999999999999999h")
    with pytest.raises(ValueError, match="finite"):
        parse_duration(float("nan"))


# (what is wrong, edit of the good file, text every message must contain)
BAD = [
    ("unknown key with a near miss",
     ('idle_timeout = "45m"', 'idle_timout = "45m"'),
     ["[settings] idle_timout", "did you mean 'idle_timeout'"]),
    ("unknown key in a profile",
     ('aws_profile = "foo"', 'aws_profile = "foo"\nregoin = "x"'),
     ["[profiles.foo] regoin", "did you mean 'region'"]),
    ("wrong type: port as a string",
     ("port = 2222", 'port = "2222"'),
     ["[profiles.foo.bastion] port", "expected a port number 1–65535", "'2222'"]),
    ("wrong type: auto_stop as a string",
     ("port = 2222", 'port = 2222\nauto_stop = "yes"'),
     ["[profiles.foo.bastion] auto_stop", "expected true or false"]),
    ("wrong type: terminal not a list",
     ('terminal = ["xterm", "-e"]', 'terminal = "xterm -e"'),
     ["[settings] terminal", "array of strings"]),
    ("both instance_id and name",
     ('name = "foo-bastion"', 'name = "foo-bastion"\ninstance_id = "i-0123456789abcdef0"'),
     ["[profiles.foo.bastion] instance_id", "exactly one of", "both are set"]),
    ("neither instance_id nor name",
     ('name = "foo-bastion"', ""),
     ["[profiles.foo.bastion] instance_id", "exactly one of", "neither is set"]),
    ("malformed instance id",
     ('name = "foo-bastion"', 'instance_id = "i-xyz"'),
     ["[profiles.foo.bastion] instance_id", "8 or 17 hex digits", "'i-xyz'"]),
    ("port above 65535",
     ("port = 2222", "port = 70000"),
     ["[profiles.foo.bastion] port", "1–65535", "70000"]),
    ("port zero on a forward",
     ("local_port = 13306", "local_port = 0"),
     ["[profiles.foo.forwards.db] local_port", "1–65535"]),
    ("missing required key",
     ('remote_host = "foo.abcdefg.ap-northeast-1.rds.amazonaws.com"', ""),
     ["[profiles.foo.forwards.db] remote_host", "required"]),
    ("missing region",
     ('region = "ap-northeast-1"', ""),
     ["[profiles.foo] region", "required"]),
    ("non-loopback bind not allowed",
     ("remote_port = 3306", 'remote_port = 3306\nbind = "0.0.0.0"'),
     ["[profiles.foo.forwards.db] bind", "not a loopback address", "allow_non_loopback_bind"]),
    ("bad duration",
     ('idle_timeout = "4s"', 'idle_timeout = "soon"'),
     ["[profiles.foo.bastion] idle_timeout", "\"30m\""]),
    ("settings idle_timeout NaN (TOML nan)",
     ('idle_timeout = "45m"', "idle_timeout = nan"),
     ["[settings] idle_timeout", "finite", "at most 7 d", "nan"]),
    ("settings idle_timeout infinite (TOML inf)",
     ('idle_timeout = "45m"', "idle_timeout = inf"),
     ["[settings] idle_timeout", "finite", "at most 7 d", "inf"]),
    ("settings idle_timeout 1e309 (overflows to inf)",
     ('idle_timeout = "45m"', "idle_timeout = 1e309"),
     ["[settings] idle_timeout", "finite", "at most 7 d"]),
    ("settings idle_timeout negative",
     ('idle_timeout = "45m"', "idle_timeout = -5"),
     ["[settings] idle_timeout", "≥ 0", "at most 7 d", "-5"]),
    ("settings idle_timeout absurdly long",
     ('idle_timeout = "45m"', 'idle_timeout = "99999999999999999999h"'),
     ["[settings] idle_timeout", "at most 7 d", "'99999999999999999999h'"]),
    ("settings idle_timeout a 64-bit integer",
     ('idle_timeout = "45m"', "idle_timeout = 9223372036854775807"),
     ["[settings] idle_timeout", "at most 7 d", "9223372036854775807"]),
    ("settings idle_timeout a 100 000-character text, echoed cut",
     ('idle_timeout = "45m"', 'idle_timeout = "' + "9" * 100_000 + '"'),
     ["[settings] idle_timeout", "at most 7 d", "100000 chars"]),
    ("settings warn_before negative text",
     ("warn_before = 90", 'warn_before = "-5m"'),
     ["[settings] warn_before", "at most 7 d", "'-5m'"]),
    ("settings warn_before past 7 days",
     ("warn_before = 90", 'warn_before = "8d"'),
     ["[settings] warn_before", "at most 7 d", "'8d'"]),
    ("settings ready_timeout past an hour",
     ("warn_before = 90", 'warn_before = 90\nready_timeout = "2h"'),
     ["[settings] ready_timeout", "at most 1 h", "'2h'"]),
    ("settings lazy_wait NaN",
     ("warn_before = 90", "warn_before = 90\nlazy_wait = nan"),
     ["[settings] lazy_wait", "finite", "at most 1 h"]),
    ("settings keepalive_interval zero",
     ("warn_before = 90", "warn_before = 90\nkeepalive_interval = 0"),
     ["[settings] keepalive_interval", "at least 1 s", "at most 1 h"]),
    ("settings keepalive_interval infinite",
     ("warn_before = 90", "warn_before = 90\nkeepalive_interval = inf"),
     ["[settings] keepalive_interval", "finite", "at most 1 h"]),
    ("bastion idle_timeout past 7 days",
     ('idle_timeout = "4s"', 'idle_timeout = "169h"'),
     ["[profiles.foo.bastion] idle_timeout", "at most 7 d", "'169h'"]),
    ("bastion idle_timeout negative infinity",
     ('idle_timeout = "4s"', "idle_timeout = -inf"),
     ["[profiles.foo.bastion] idle_timeout", "finite", "at most 7 d"]),
    ("profile warn_before NaN",
     ('aws_profile = "foo"', 'aws_profile = "foo"\nwarn_before = nan'),
     ["[profiles.foo] warn_before", "finite", "at most 7 d"]),
    ("missing key file",
     ("foo.pem", "nope.pem"),
     ["[profiles.foo.bastion] identity_file", "does not exist"]),
    ("bad host-key pin",
     ("port = 2222", 'port = 2222\nhost_key = "abc"'),
     ["[profiles.foo.bastion] host_key", "SHA256:"]),
    ("a name that cannot be an ssh Host",
     ("[profiles.foo.hosts.appserver]", '[profiles.foo.hosts."app server"]'),
     ["[profiles.foo.hosts.app server]", "must be letters"]),
    ("a profile that is not a table",
     ("[profiles.foo]\n", '[profiles]\nbar = 3\n[profiles.foo]\n'),
     ["[profiles] bar", "expected a table"]),
]


@pytest.mark.parametrize(("edit", "expect"), [(e, x) for _, e, x in BAD],
                         ids=[name for name, _, _ in BAD])
def test_bad_configs_are_rejected_with_file_key_and_expectation(
        tmp_path: Path, key: Path, edit: tuple[str, str], expect: list[str]) -> None:
    text = good(key)
    assert edit[0] in text, "the test's edit must apply"
    path = write(tmp_path, text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for part in expect:
        assert part in message
    assert len(message) < 2000  # nothing the file holds is echoed back in full


def test_durations_at_their_limits_load(tmp_path: Path, key: Path) -> None:
    text = good(key).replace('idle_timeout = "45m"', 'idle_timeout = "7d"') \
        .replace("warn_before = 90", 'warn_before = 90\nready_timeout = "1h"\nlazy_wait = 3600'
                                     '\nkeepalive_interval = "60m"') \
        .replace('idle_timeout = "4s"', "idle_timeout = 604800")
    settings = load_config(write(tmp_path, text)).settings
    assert settings.idle_timeout == 7 * 86400
    assert settings.ready_timeout == settings.lazy_wait == settings.keepalive_interval == 3600


def test_two_forwards_on_one_local_port_across_profiles(tmp_path: Path, key: Path) -> None:
    text = good(key) + textwrap.dedent(f"""
        [profiles.bar]
        region = "eu-west-1"
        [profiles.bar.bastion]
        instance_id = "i-0123456789abcdef0"
        identity_file = "{key}"
        [profiles.bar.forwards.pg]
        local_port = 13306
        remote_host = "pg"
        remote_port = 5432
    """)
    with pytest.raises(ConfigError, match=r"\[profiles.bar.forwards.pg\] local_port: port 13306 "
                                          r"is already used by \[profiles.foo.forwards.db\]"):
        load_config(write(tmp_path, text))


def test_every_problem_is_reported_at_once(tmp_path: Path, key: Path) -> None:
    text = good(key).replace("port = 2222", "port = 0").replace("idle_timeout = \"45m\"",
                                                                 "idle = 1")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert len(info.value.problems) == 2


def test_non_loopback_bind_when_explicitly_allowed(tmp_path: Path, key: Path) -> None:
    text = good(key).replace("remote_port = 3306",
                             'remote_port = 3306\nbind = "0.0.0.0"\nallow_non_loopback_bind = true')
    assert load_config(write(tmp_path, text)).profile("foo").forwards["db"].bind == "0.0.0.0"


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[settings]\nidle_timeout = "30m\n')
    with pytest.raises(ConfigError, match=r"TOML syntax error.*line 2") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_says_where_the_path_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config file at .* \(chosen by "
                                          r"\$BASTION_TRAY_CONFIG\) — run `bastion-tray init`"):
        load_config(tmp_path / "nope.toml", "$BASTION_TRAY_CONFIG")


def test_unreadable_file(tmp_path: Path) -> None:
    # a directory cannot be read as a file, even by root (chmod 000 would not stop root)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path)


def test_no_profiles(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"profiles: expected at least one \[profiles.NAME\]"):
        load_config(write(tmp_path, "[settings]\n"))


def test_config_path_precedence(tmp_path: Path) -> None:
    env = {"BASTION_TRAY_CONFIG": str(tmp_path / "env.toml"), "BASTION_TRAY_HOME": str(tmp_path)}
    assert config_path("/x/cli.toml", env) == (Path("/x/cli.toml"), "--config")
    assert config_path(None, env) == (tmp_path / "env.toml", "$BASTION_TRAY_CONFIG")
    home_only = {"BASTION_TRAY_HOME": str(tmp_path)}
    assert config_path(None, home_only) == (tmp_path / "config" / "config.toml",
                                            "default location")
    default, _ = config_path(None, {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "x")})
    assert default.name == "config.toml" and default.parent.name == "bastion-tray"


def test_bastion_tray_home_holds_everything(tmp_path: Path) -> None:
    paths = app_paths({"BASTION_TRAY_HOME": str(tmp_path)})
    for p in (paths.default_config, paths.known_hosts, paths.socket, paths.daemon_log):
        assert tmp_path in p.parents


def test_check_config_prints_profiles(tmp_path: Path, key: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, good(key))
    assert main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "foo: region ap-northeast-1" in out
    assert "forward db: 127.0.0.1:13306 → foo.abcdefg" in out
    assert "host appserver: ec2-user@10.0.0.115:22" in out


def test_check_config_exits_2_with_the_problems(tmp_path: Path, key: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, good(key).replace("port = 2222", "port = 99999"))
    assert main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "port" in err and "99999" in err


# --- `keep`: the CLI refuses a bad duration itself, before any daemon is asked or started ---

KEEP_CONFIG = """
[profiles.foo]
region = "ap-northeast-1"

[profiles.foo.bastion]
instance_id = "i-0123456789abcdef0"
"""


@pytest.mark.parametrize("argv", [
    ["99999999999999999999h"],  # issue 8: was accepted, "stops in 359999999999999983222784 s"
    ["8d"], ["604801"], ["NaN"], ["inf"], ["1e309"], ["--", "-5m"], ["1h", "--", "2h"],
], ids=["20-nines-h", "8d", "7d+1s", "NaN", "inf", "1e309", "-5m", "two-durations"])
def test_keep_refuses_a_bad_duration_with_exit_2_before_contacting_the_daemon(
        tmp_path: Path, argv: list[str]) -> None:
    config = write(tmp_path, KEEP_CONFIG)
    # A home whose socket path is too long for AF_UNIX: were the check missing, no daemon could
    # start there (the CLI would exit 1, not 2) and none would be left running.
    home = tmp_path / ("h" * 120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_TRAY_")}
    env.update(BASTION_TRAY_HOME=str(home), BASTION_TRAY_LOOPBACK_ONLY="1")
    proc = subprocess.run([sys.executable, "-m", "bastion_tray", "--config", str(config),
                           "keep", "foo", *argv], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr
    assert "bastion-tray: error: keep: " in proc.stderr
    if argv[-1] != "2h":
        assert "at most 7 d" in proc.stderr
    assert not (home / "log").exists(), "the daemon was contacted"
    assert proc.stdout == ""


def test_a_host_named_bastion_is_refused_its_alias_is_the_bastions(tmp_path: Path,
                                                                   key: Path) -> None:
    text = good(key) + '\n[profiles.foo.hosts.bastion]\nhostname = "10.0.0.9"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), "--config")
    assert "[profiles.foo.hosts.bastion]" in str(caught.value)
    assert "cannot be named 'bastion'" in str(caught.value)
