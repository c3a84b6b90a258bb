"""A client command starts in a blink: it imports neither boto3 nor paramiko (nor the tray's
libraries) unless it uses them. Those are most of a cold start (boto3 alone was ~330 ms of a
366 ms `status`), and only the daemon, `init`, `trust` and the tray need them.

Each case runs the real `main()` in a fresh interpreter — the whole parser (every command module
imported, as `--help` needs), then the command's own `run()` down to the daemon's client — with
only the daemon's answer faked, and reports what was imported. Timings are not asserted: this
machine is shared and noisy; the import set is what makes the time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("boto3", "botocore", "s3transfer", "paramiko", "cryptography", "nacl", "bcrypt",
         "pystray", "PIL", "gi", "shtab")

CONFIG = """\
[profiles.foo]
region = "us-east-1"

[profiles.foo.bastion]
instance_id = "i-0123456789abcdef0"
user = "u"

[profiles.foo.hosts.app]
hostname = "10.0.0.115"

[profiles.foo.forwards.db]
local_port = 13306
remote_host = "db.internal"
remote_port = 3306
"""

# Runs main(argv) with ControlClient.connect answering from a fake daemon, so everything above
# the socket is the real code path: session, clientside.connect, the command's run(). Prints
# the heavy modules that ended up imported, as JSON, on the last line of stdout.
PROBE = """
import json, sys
from bastion_tray.core.errors import DaemonError
from bastion_tray.service import control_client

STATUS = {"daemon": {"config": "config.toml", "config_changed": False, "pid": 1,
                     "version": "0.1.0"},
          "profiles": {"foo": {
    "auto_stop": True, "hosts": [], "idle_reason": None, "idle_seconds": None, "in_use_by": [],
    "last_link_loss": None, "lifecycle": "idle", "link_losses": 0, "other_sessions": 0,
    "phase": None, "sessions": 0, "started_by_daemon": False, "starting_for_seconds": None,
    "stops_in_seconds": None, "user_id": "me@laptop", "waiting": 0, "waiting_for_others": False,
    "error": None, "lease": {"error": None, "held": False, "until": None},
    "backstop": {"fires_at": None, "fires_in_seconds": None, "reason": "no role",
                 "state": "off"},
    "bastion": {"host": None, "instance_id": "i-0123456789abcdef0", "name": None,
                "ssh": "disconnected", "state": "stopped"},
    "forwards": {"db": {"active_connections": 0, "bytes_down": 0, "bytes_up": 0,
                        "listening": True, "local": "127.0.0.1:13306",
                        "remote": "db.internal:3306", "total_connections": 0}}}}}

class FakeDaemon:
    pid = 1
    def __enter__(self): return self
    def __exit__(self, *exc): self.close()
    def close(self): pass
    def request(self, op, **args):
        replies = {"status": STATUS, "connect": {"local": "127.0.0.1:13306"}}
        if op not in replies:
            raise DaemonError(f"fake daemon: no {op}")
        return replies[op]
    def __getattr__(self, name):  # whatever else a command asks (proxy's stream): refused
        raise DaemonError(f"fake daemon: no {name}")

control_client.ControlClient.connect = classmethod(lambda cls, paths, **kw: FakeDaemon())
from bastion_tray.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.fixture
def home() -> Iterator[Path]:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))  # short: AF_UNIX paths are limited
    (path / "config.toml").write_text(CONFIG)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def probe(home: Path, argv: list[str], *, package_root: Path = ROOT) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_TRAY_")}
    env.update(BASTION_TRAY_HOME=str(home), BASTION_TRAY_CONFIG=str(home / "config.toml"),
               PYTHONPATH=str(package_root))
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=package_root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("argv, code", [
    (["status"], 0),
    (["status", "--json"], 0),
    (["connect", "foo", "db"], 0),
    (["up", "foo"], 1),  # the fake daemon refuses `up`: what it imported on the way still counts
    (["proxy", "foo", "app", "22"], 1),
    (["stop", "foo"], 1),
    (["ssh-config", "foo"], 0),
    (["--help"], 0),
    (["proxy", "--help"], 0),
])
def test_a_client_command_imports_no_heavy_library(home: Path, argv: list[str],
                                                   code: int) -> None:
    result = probe(home, argv)
    assert result == {"code": code, "heavy": []}


def test_the_check_sees_an_eager_boto3_import_in_a_command_module(home: Path,
                                                                  tmp_path: Path) -> None:
    """The check can fail: a copy of the package with `import boto3` at the top of up.py (a
    command that never needs it) makes `status` import boto3, and the probe says so."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "bastion_tray", copy / "bastion_tray",
                    ignore=shutil.ignore_patterns("__pycache__"))
    up = copy / "bastion_tray" / "cli" / "commands" / "up.py"
    up.write_text(up.read_text().replace("import argparse\n", "import argparse\n\nimport boto3\n",
                                         1))
    result = probe(home, ["status"], package_root=copy)
    assert "boto3" in result["heavy"], result  # type: ignore[operator]


def test_inits_help_names_the_role_init_creates() -> None:
    """init's --help spells the role's name out, so the parser needs no boto3 to say it."""
    from bastion_tray.adapters import iam_role
    from bastion_tray.cli.commands import init

    assert init.BACKSTOP_ROLE_NAME == iam_role.DEFAULT_ROLE_NAME
