"""bastion-tray: a stopped-by-default AWS bastion, started on demand and stopped when idle."""

__version__ = "0.1.0"
