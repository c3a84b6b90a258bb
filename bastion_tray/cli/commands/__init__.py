"""One module per subcommand; each has `register(subparsers)` that sets `run` as the default."""

from bastion_tray.cli.commands import check_config

ALL = [check_config]
