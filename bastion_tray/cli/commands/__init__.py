"""One module per subcommand; each has `register(subparsers)` that sets `run` as the default."""

from bastion_tray.cli.commands import (
    audit,
    autostart,
    check_config,
    completion,
    cost,
    daemon,
    demo,
    init,
    logs,
    proxy,
    shell,
    ssh_config,
    status,
    stop,
    tray,
    trust,
    up,
)

ALL = [daemon, up, status, cost, proxy, shell, ssh_config, stop, trust, tray, autostart,
       check_config, init, audit, demo, logs, completion]
