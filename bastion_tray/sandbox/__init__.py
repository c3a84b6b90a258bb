"""The sandbox VPC for tests and the demo: fake AWS, a real bastion sshd, private hosts.

Everything runs on this machine, on loopback addresses only. See DESIGN.md "The sandbox".
"""

from bastion_tray.sandbox.errors import SandboxError
from bastion_tray.sandbox.prereqs import missing_prerequisites
from bastion_tray.sandbox.sandbox import Sandbox

__all__ = ["Sandbox", "SandboxError", "missing_prerequisites"]
