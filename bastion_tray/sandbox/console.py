"""The sandbox instances' console output: what Amazon Linux prints at first boot, with the real
fingerprints of the sandbox sshd's host key (sandbox/motoserver.py hands it out)."""

from __future__ import annotations

from pathlib import Path

from bastion_tray.sandbox.keys import fingerprint
from bastion_tray.sandbox.motoserver import console_file

#: the bits ssh-keygen -l prints per key type
_BITS = {"ssh-ed25519": 256, "ecdsa-sha2-nistp256": 256, "ssh-rsa": 3072}
_KINDS = {"ssh-ed25519": "ED25519", "ecdsa-sha2-nistp256": "ECDSA", "ssh-rsa": "RSA"}


def console_dir(aws_state_dir: Path) -> Path:
    """Where start_moto's server looks for ``<instance-id>.txt``."""
    return aws_state_dir / "console"


def amazon_linux_output(public_lines: list[str], hostname: str) -> str:
    """A first boot's console as Amazon Linux 2 prints it: kernel lines, cloud-init, then the
    host keys' fingerprint and key blocks with syslog-style ``ec2: `` prefixes and CRLFs."""
    stamp = "<14>Dec  3 06:00:01 ec2: "
    prints = [f"{_BITS.get(line.split()[0], 256)} {fingerprint(line)} root@{hostname} "
              f"({_KINDS.get(line.split()[0], line.split()[0])})" for line in public_lines]
    lines = [
        "[    0.000000] Linux version 6.1.115-126.197.amzn2023.x86_64 (mockbuild@ip-10-0-46-83)",
        "[    0.000000] Command line: BOOT_IMAGE=(hd0,gpt1)/boot/vmlinuz root=UUID=4f5e ro",
        "[   11.523304] cloud-init[1986]: Cloud-init v. 22.2.2 running 'modules:final' at "
        "Thu, 03 Dec 2026 06:00:01 +0000. Up 11.47 seconds.",
        "ci-info: no authorized SSH keys fingerprints found for user ec2-user.",
        stamp,
        stamp + "#" * 61,
        stamp + "-----BEGIN SSH HOST KEY FINGERPRINTS-----",
        *(stamp + p for p in prints),
        stamp + "-----END SSH HOST KEY FINGERPRINTS-----",
        stamp + "#" * 61,
        "-----BEGIN SSH HOST KEY KEYS-----",
        *(f"{line} root@{hostname}" for line in public_lines),
        "-----END SSH HOST KEY KEYS-----",
        "[   11.601217] cloud-init[1986]: Cloud-init v. 22.2.2 finished at Thu, 03 Dec 2026 "
        "06:00:01 +0000. Up 11.59 seconds",
        "",
    ]
    return "\r\n".join(lines)


def write_output(directory: Path, instance_id: str, text: str | None, *,
                 latest: bool = False) -> None:
    """Make `text` the instance's console output (`latest`: what ``Latest=true`` answers;
    None there: the same as without); None: moto's canned one (no fingerprints)."""
    path = console_file(directory, instance_id, latest=latest)
    if path is None:
        raise ValueError(f"not an instance id: {instance_id!r}")
    if text is None:
        path.unlink(missing_ok=True)
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:  # CRLFs stay CRLFs
        handle.write(text)
    tmp.replace(path)  # a GetConsoleOutput never reads half a file
