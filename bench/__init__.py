"""On-demand benchmark: bastion-tray's forwards side by side with OpenSSH `ssh -N -L`.

`python -m bench` (or `make bench`) from the repository root; not part of the test suite.
Everything runs on loopback addresses inside a sandbox VPC started for the run.
"""
