"""One module per subcommand; each has `register(subparsers)` that sets `run` as the default."""

from bastion_tray.cli.commands import (
    check_config,
    daemon,
    init,
    proxy,
    shell,
    ssh_config,
    status,
    stop,
    trust,
    up,
)

ALL = [daemon, up, status, proxy, shell, ssh_config, stop, trust, check_config,
       init]
