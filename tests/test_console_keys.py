"""Host-key fingerprints read from an EC2 console output (core/console_keys.py, pure).

The keys below are real (made with ssh-keygen for these tests, the private halves thrown
away); their fingerprints are what `ssh-keygen -lf` printed for them.
"""

from __future__ import annotations

import pytest

from bastion_tray.core.console_keys import (
    MISMATCH,
    UNAVAILABLE,
    VERIFIED,
    console_fingerprints,
    judge,
    key_fingerprint,
)

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDQcZVrWuKGZpnn4DUlXczANz4txGXNvLQ9cW3MElKT8"
ED25519_FP = "SHA256:2aKDHycKHdco6iJEPRmn3sRroADl5vWPTYjGsXo+VO8"
ECDSA = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ1PpmMZLlOb5d0"
         "CWrtLs3tJ2J63xC5wBnFrjcCQx0mW+LK5Lml8/frB7U2LemWYtYCu4qux/wuMxQaCsAtaocY=")
ECDSA_FP = "SHA256:JcVywtvUcUP2MYcWp+XRaj+9cp9FN3SfLBMoH4wUIpc"
RSA_FP = "SHA256:cg83rWbieG6iYw8dSbfMr8IY93H63MPFqkxB6EygprE"
OTHER_FP = "SHA256:" + "Q" * 43

#: Amazon Linux 2, as GetConsoleOutput returns it: syslog-tagged "ec2:" lines, CRLF
AMAZON_LINUX_2 = (
    "[   20.581036] cloud-init[2590]: Cloud-init v. 19.3-46.amzn2 running 'modules:final'\r\n"
    "ci-info: no authorized ssh keys fingerprints found for user ec2-user.\r\n"
    "<14>Dec  3 06:00:01 ec2: \r\n"
    "<14>Dec  3 06:00:01 ec2: #############################################################\r\n"
    "<14>Dec  3 06:00:01 ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n"
    f"<14>Dec  3 06:00:01 ec2: 256 {ECDSA_FP} no comment (ECDSA)\r\n"
    f"<14>Dec  3 06:00:01 ec2: 256 {ED25519_FP} no comment (ED25519)\r\n"
    f"<14>Dec  3 06:00:01 ec2: 3072 {RSA_FP} no comment (RSA)\r\n"
    "<14>Dec  3 06:00:01 ec2: -----END SSH HOST KEY FINGERPRINTS-----\r\n"
    "<14>Dec  3 06:00:01 ec2: #############################################################\r\n"
    "-----BEGIN SSH HOST KEY KEYS-----\r\n"
    f"{ECDSA} \r\n{ED25519} \r\n"
    "-----END SSH HOST KEY KEYS-----\r\n"
    "[   20.9] cloud-init[2590]: Cloud-init v. 19.3-46.amzn2 finished at Thu, 03 Dec 2026\r\n"
)

#: Amazon Linux 2023 / plain cloud-init: "cloud-init[pid]:" prefixes, comments with root@host
AL2023 = (
    "[   12.1] cloud-init[1986]: #############################################################\n"
    "[   12.1] cloud-init[1986]: -----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
    f"[   12.1] cloud-init[1986]: 256 {ECDSA_FP} root@ip-10-0-0-5.ec2.internal (ECDSA)\n"
    f"[   12.1] cloud-init[1986]: 256 {ED25519_FP} root@ip-10-0-0-5.ec2.internal (ED25519)\n"
    "[   12.1] cloud-init[1986]: -----END SSH HOST KEY FINGERPRINTS-----\n"
)


def test_amazon_linux_2_block_with_prefixes_and_crlf() -> None:
    assert console_fingerprints(AMAZON_LINUX_2) == {ECDSA_FP, ED25519_FP, RSA_FP}


def test_cloud_init_block_with_timestamps_and_pid_prefixes() -> None:
    assert console_fingerprints(AL2023) == {ECDSA_FP, ED25519_FP}


def test_keys_block_alone_gives_the_fingerprints_of_its_keys() -> None:
    text = (f"junk\nec2: -----BEGIN SSH HOST KEY KEYS-----\nec2: {ED25519} root@ip-10-0-0-5\n"
            f"ec2: {ECDSA}\nec2: -----END SSH HOST KEY KEYS-----\n")
    assert console_fingerprints(text) == {ED25519_FP, ECDSA_FP}


def test_key_fingerprint_is_ssh_keygens() -> None:
    assert key_fingerprint(*ED25519.split()) == ED25519_FP
    assert key_fingerprint(*ECDSA.split()) == ECDSA_FP


@pytest.mark.parametrize("blob", [
    "AAAAC3NzaC1lZDI1NTE5AAAAIDQcZVrWuKGZpnn4DUlXczANz4txGXNvLQ9cW3MElKT",  # truncated: bad b64
    "AAAAB3NzaC1yc2EAAAADAQABAAABgQCL",  # an RSA blob under the ed25519 name
    "not base64 at all!",
])
def test_key_fingerprint_rejects_what_is_not_that_key(blob: str) -> None:
    assert key_fingerprint("ssh-ed25519", blob) is None


def test_no_block_is_none() -> None:
    assert console_fingerprints(None) is None
    assert console_fingerprints("") is None
    assert console_fingerprints("Linux version 2.6.16-xenU\nBIOS-provided physical RAM map:\n"
                                f"a stray {ED25519_FP} outside any block\n") is None


def test_block_cut_short_counts_as_none() -> None:
    """64 KB of output can end mid-block, or begin mid-block: neither vouches for anything."""
    head = AL2023.rsplit("-----END", 1)[0]
    assert console_fingerprints(head) is None
    tail = AL2023.split("FINGERPRINTS-----\n", 1)[1]  # starts after the BEGIN line
    assert console_fingerprints(tail) is None


def test_last_boot_wins() -> None:
    """A rebuilt root volume, a second first boot: the keys of the latest block count."""
    old_boot = AL2023.replace(ECDSA_FP, OTHER_FP).replace(ED25519_FP, OTHER_FP)
    assert console_fingerprints(old_boot + "reboot\n" + AL2023) == {ECDSA_FP, ED25519_FP}
    assert console_fingerprints(AL2023 + "reboot\n" + old_boot) == {OTHER_FP}


def test_last_boots_keys_block_joins_its_fingerprint_block_only() -> None:
    """cloud-init prints FINGERPRINTS, then KEYS: a KEYS block belongs with the FINGERPRINTS
    block before it, never with the one after it (a later boot)."""
    keys_block = f"-----BEGIN SSH HOST KEY KEYS-----\n{ECDSA}\n-----END SSH HOST KEY KEYS-----\n"
    ed25519_only = ("-----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
                    f"256 {ED25519_FP} root@ip (ED25519)\n"
                    "-----END SSH HOST KEY FINGERPRINTS-----\n")
    assert console_fingerprints(ed25519_only + keys_block) == {ED25519_FP, ECDSA_FP}
    assert console_fingerprints(keys_block + ed25519_only) == {ED25519_FP}


def test_junk_and_md5_fingerprints_inside_the_block() -> None:
    text = ("-----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
            "\x1b[0m garbage \x00 line\n"
            "2048 ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89 /etc/ssh/ssh_host_rsa_key.pub "
            "(RSA)\n"
            f"256 {ED25519_FP}= padded (ED25519)\n"
            "256 SHA256:tooShort (ECDSA)\n"
            "-----END SSH HOST KEY FINGERPRINTS-----\n")
    assert console_fingerprints(text) == {ED25519_FP}


def test_a_block_of_md5_fingerprints_only_is_empty_not_none() -> None:
    text = ("ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
            "ec2: 2048 ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89 x (RSA)\n"
            "ec2: -----END SSH HOST KEY FINGERPRINTS-----\n")
    assert console_fingerprints(text) == frozenset()
    verdict = judge(ED25519_FP, frozenset(), instance_id="i-0abc")
    assert verdict.outcome == UNAVAILABLE and "no SHA256" in verdict.reason


def test_judge_says_why() -> None:
    listed = console_fingerprints(AMAZON_LINUX_2)
    ok = judge(ED25519_FP, listed, instance_id="i-0abc")
    assert ok.verified and ok.outcome == VERIFIED and ok.instance_id == "i-0abc"
    assert ok.reason == f"{ED25519_FP} is listed in the console output of instance i-0abc"

    bad = judge(OTHER_FP, listed, instance_id="i-0abc")
    assert bad.outcome == MISMATCH and not bad.verified
    assert bad.listed == {ECDSA_FP, ED25519_FP, RSA_FP}
    assert bad.reason == (f"{OTHER_FP} is not among the 3 host key fingerprints in the console "
                          "output of instance i-0abc")

    none = judge(ED25519_FP, None, instance_id="i-0abc")
    assert none.outcome == UNAVAILABLE and "holds no SSH host key fingerprints" in none.reason
