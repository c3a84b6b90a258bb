"""`count_other_sessions` on real captured output: what the count command printed through the
sandbox's OpenSSH bastion, and ss / /proc listings of loopback sockets taken on this Debian 12
machine (iproute2 6.1.0; Amazon Linux 2023's iproute 5.x/6.x prints the same columns).

`ss -Htn state established` prints ``Recv-Q Send-Q Local:Port Peer:Port`` — no State column
(the filter names the state), no header (-H); IPv6 in brackets, IPv4 on a dual-stack socket as
``[::ffff:a.b.c.d]``. /proc/net/tcp{,6} print addresses as hex in host byte order per 32-bit
word and state 01 for ESTABLISHED.
"""

from __future__ import annotations

import random

import pytest

from bastion_tray.core.sessions import (
    COUNT_COMMAND,
    MARK_END,
    MARK_PROC,
    MARK_SS,
    MARK_SSH_CONNECTION,
    SESSION_COUNT_TIMEOUT,
    count_command,
    count_other_sessions,
)

# --- captured through the sandbox bastion (sshd on 127.119.124.248:53093): our link from
# 127.0.0.1:55970, two `ssh -N` clients; the client halves show too (the "bastion" is this host)

SANDBOX_SS = """\
==bastion-tray:ssh_connection==
127.0.0.1 55970 127.119.124.248 53093
==bastion-tray:ss==
0      0      127.119.124.248:53093       127.0.0.1:55970
0      0      127.119.124.248:53093       127.0.0.1:55986
0      0      127.119.124.248:53093       127.0.0.1:55994
0      0            127.0.0.1:55970 127.119.124.248:53093
0      0            127.0.0.1:55986 127.119.124.248:53093
0      0            127.0.0.1:55994 127.119.124.248:53093
==bastion-tray:end==
"""

PROC_TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
                   "   uid  timeout inode")
PROC_TCP6_HEADER = ("  sl  local_address                         remote_address              "
                    "          st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode")

# the same moment through the /proc fallback: sshd's listening socket (0A), the three
# server-side connections, a readiness probe's TIME_WAIT (06) and the client halves
SANDBOX_PROC = f"""\
==bastion-tray:ssh_connection==
127.0.0.1 55970 127.119.124.248 53093
==bastion-tray:proc==
{PROC_TCP_HEADER}
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1572 1 000000009c3b8486 100 0 0 10 0
   3: F87C777F:CF65 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13875 1 0000000085c7b5a1 100 0 0 10 0
  63: F87C777F:CF65 0100007F:DAA2 01 00000000:00000000 02:000AFBC1 00000000     0        0 14357 3 00000000632d206e 20 4 23 18 -1
  69: F87C777F:CF65 0100007F:DAB2 01 00000000:00000000 02:000AFBC8 00000000     0        0 14379 2 00000000dee78396 20 4 17 18 -1
  98: F87C777F:CF65 0100007F:DABA 01 00000000:00000000 02:000AFBC7 00000000     0        0 14383 2 000000000f2db289 20 4 17 18 -1
 156: 0100007F:DA94 F87C777F:CF65 06 00000000:00000000 03:000016B0 00000000     0        0 0 3 000000000ad083b9
 157: 0100007F:DAA2 F87C777F:CF65 01 00000000:00000000 02:000AFBC0 00000000     0        0 13876 3 000000000762bb66 20 4 0 18 -1
 158: 0100007F:DAB2 F87C777F:CF65 01 00000000:00000000 02:000AFBC6 00000000     0        0 14378 2 00000000f3e3c4e7 20 4 20 18 -1
 159: 0100007F:DABA F87C777F:CF65 01 00000000:00000000 02:000AFBC6 00000000     0        0 13891 2 00000000ddc11719 20 4 20 18 -1
{PROC_TCP6_HEADER}
==bastion-tray:end==
"""  # noqa: E501

# --- loopback sockets on this machine: a dual-stack listener on [::]:55353 (three clients from
# 127.0.0.1, one from ::1), an IPv6-only one on [::1]:59791 (two clients), an IPv4 one on
# 127.0.0.9:42365 (one client)

LOOPBACK_SS = """\
0      0               127.0.0.1:51456          127.0.0.1:55353
0      0               127.0.0.1:51470          127.0.0.1:55353
0      0               127.0.0.1:51476          127.0.0.1:55353
0      0               127.0.0.1:49050          127.0.0.9:42365
0      0               127.0.0.9:42365          127.0.0.1:49050
0      0                   [::1]:59870              [::1]:55353
0      0                   [::1]:55353              [::1]:59870
0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51470
0      0                   [::1]:57482              [::1]:59791
0      0                   [::1]:57498              [::1]:59791
0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51456
0      0                   [::1]:59791              [::1]:57482
0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51476
0      0                   [::1]:59791              [::1]:57498
"""

# `ss -Htnp state established`: a process column, padded with trailing blanks
LOOPBACK_SS_PROCESSES = """\
0      0               127.0.0.1:51456          127.0.0.1:55353 users:(("python3",pid=9133,fd=6)) 
0      0               127.0.0.1:51470          127.0.0.1:55353 users:(("python3",pid=9133,fd=8)) 
0      0               127.0.0.1:51476          127.0.0.1:55353 users:(("python3",pid=9133,fd=11))
0      0               127.0.0.1:49050          127.0.0.9:42365 users:(("python3",pid=9133,fd=19))
0      0               127.0.0.9:42365          127.0.0.1:49050 users:(("python3",pid=9133,fd=20))
0      0                   [::1]:59870              [::1]:55353 users:(("python3",pid=9133,fd=13))
0      0                   [::1]:55353              [::1]:59870 users:(("python3",pid=9133,fd=14))
0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51470 users:(("python3",pid=9133,fd=9)) 
0      0                   [::1]:57482              [::1]:59791 users:(("python3",pid=9133,fd=15))
0      0                   [::1]:57498              [::1]:59791 users:(("python3",pid=9133,fd=17))
0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51456 users:(("python3",pid=9133,fd=7)) 
0      0                   [::1]:59791              [::1]:57482 users:(("python3",pid=9133,fd=16))
0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51476 users:(("python3",pid=9133,fd=12))
0      0                   [::1]:59791              [::1]:57498 users:(("python3",pid=9133,fd=18))
"""  # noqa: W291

# plain `ss -tn`: the State column and a header
LOOPBACK_SS_WITH_STATE = """\
State Recv-Q Send-Q      Local Address:Port        Peer Address:Port Process
ESTAB 0      0               127.0.0.1:51456          127.0.0.1:55353       
ESTAB 0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51470       
ESTAB 0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51456       
ESTAB 0      0      [::ffff:127.0.0.1]:55353 [::ffff:127.0.0.1]:51476       
ESTAB 0      0                   [::1]:55353              [::1]:59870       
"""  # noqa: W291

LOOPBACK_PROC = f"""\
{PROC_TCP_HEADER}
   1: 0900007F:A57D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13007 1 000000005be04094 100 0 0 10 0
  60: 0100007F:C900 0100007F:D839 01 00000000:00000000 00:00000000 00000000     0        0 13008 2 00000000e2b5dc69 20 0 0 10 -1
  61: 0100007F:C90E 0100007F:D839 01 00000000:00000000 00:00000000 00000000     0        0 13010 2 0000000084300ead 20 0 0 10 -1
  62: 0100007F:C914 0100007F:D839 01 00000000:00000000 00:00000000 00000000     0        0 13012 2 000000009aea5555 20 0 0 10 -1
  65: 0100007F:BF9A 0900007F:A57D 01 00000000:00000000 00:00000000 00000000     0        0 13020 2 00000000a3b83314 20 0 0 10 -1
 111: 0900007F:A57D 0100007F:BF9A 01 00000000:00000000 00:00000000 00000000     0        0 13021 1 0000000052e092b6 20 0 0 10 -1
{PROC_TCP6_HEADER}
   0: 00000000000000000000000000000000:D839 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13005 1 0000000012ceb02a 100 0 0 10 0
   1: 00000000000000000000000001000000:E98F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 13006 1 000000008d7e4b98 100 0 0 10 0
   2: 00000000000000000000000001000000:E9DE 00000000000000000000000001000000:D839 01 00000000:00000000 00:00000000 00000000     0        0 13014 2 00000000c63165b5 20 0 0 10 -1
   3: 00000000000000000000000001000000:D839 00000000000000000000000001000000:E9DE 01 00000000:00000000 00:00000000 00000000     0        0 13015 1 0000000023a5fe8e 20 0 0 10 -1
   4: 0000000000000000FFFF00000100007F:D839 0000000000000000FFFF00000100007F:C90E 01 00000000:00000000 00:00000000 00000000     0        0 13011 1 00000000e653ece4 20 0 0 10 -1
   5: 00000000000000000000000001000000:E08A 00000000000000000000000001000000:E98F 01 00000000:00000000 00:00000000 00000000     0        0 13016 2 000000002d50bdc9 20 0 0 10 -1
   6: 00000000000000000000000001000000:E09A 00000000000000000000000001000000:E98F 01 00000000:00000000 00:00000000 00000000     0        0 13018 2 0000000092c100a0 20 0 0 10 -1
   7: 0000000000000000FFFF00000100007F:D839 0000000000000000FFFF00000100007F:C900 01 00000000:00000000 00:00000000 00000000     0        0 13009 1 00000000a18441f2 20 0 0 10 -1
   8: 00000000000000000000000001000000:E98F 00000000000000000000000001000000:E08A 01 00000000:00000000 00:00000000 00000000     0        0 13017 1 00000000360b3176 20 0 0 10 -1
   9: 0000000000000000FFFF00000100007F:D839 0000000000000000FFFF00000100007F:C914 01 00000000:00000000 00:00000000 00000000     0        0 13013 1 00000000a59f2222 20 0 0 10 -1
  10: 00000000000000000000000001000000:E98F 00000000000000000000000001000000:E09A 01 00000000:00000000 00:00000000 00000000     0        0 13019 1 00000000a02da791 20 0 0 10 -1
"""  # noqa: E501


def output(ssh_connection: str, listing: str, *, via: str = MARK_SS) -> str:
    return f"{MARK_SSH_CONNECTION}\n{ssh_connection}\n{via}\n{listing}{MARK_END}\n"


# --- counting ------------------------------------------------------------------------------

def test_the_sandbox_capture_counts_the_two_plain_ssh_clients_and_not_our_link() -> None:
    assert count_other_sessions(SANDBOX_SS) == 2


def test_the_proc_fallback_of_the_same_moment_counts_the_same() -> None:
    """Listening (0A) and TIME_WAIT (06) lines on the sshd endpoint do not count."""
    assert count_other_sessions(SANDBOX_PROC) == 2


@pytest.mark.parametrize("client_port", [55986, 55994])
def test_whichever_connection_is_ours_is_the_one_subtracted(client_port: int) -> None:
    for text in (SANDBOX_SS, SANDBOX_PROC):
        moved = text.replace("127.0.0.1 55970 ", f"127.0.0.1 {client_port} ")
        assert count_other_sessions(moved) == 2


LISTINGS = {"ss": (LOOPBACK_SS, MARK_SS), "ss -p": (LOOPBACK_SS_PROCESSES, MARK_SS),
            "proc": (LOOPBACK_PROC, MARK_PROC)}


@pytest.mark.parametrize("listing", LISTINGS)
@pytest.mark.parametrize(("ssh_connection", "expected"), [
    # IPv4 clients of a dual-stack socket: ss and /proc show ::ffff:127.0.0.1, sshd reports
    # plain IPv4 in SSH_CONNECTION; the ::1 client of the same listener has another local end
    ("127.0.0.1 51456 127.0.0.1 55353", 2),
    ("127.0.0.1 51476 127.0.0.1 55353", 2),
    ("::1 59870 ::1 55353", 0),
    ("::1 57482 ::1 59791", 1),  # IPv6, bracketed in ss
    ("::1 57498 0:0:0:0:0:0:0:1 59791", 1),  # however the address is spelled
    ("127.0.0.1 49050 127.0.0.9 42365", 0),  # the other local ports' connections do not count
])
def test_loopback_captures_count_only_connections_to_the_sshd_endpoint(
        listing: str, ssh_connection: str, expected: int) -> None:
    text, via = LISTINGS[listing]
    assert count_other_sessions(output(ssh_connection, text, via=via)) == expected


def test_the_state_column_and_a_header_change_nothing() -> None:
    text = output("127.0.0.1 51456 127.0.0.1 55353", LOOPBACK_SS_WITH_STATE)
    assert count_other_sessions(text) == 2


def test_a_mapped_address_in_ssh_connection_matches_too() -> None:
    text = output("::ffff:127.0.0.1 51456 ::ffff:127.0.0.1 55353", LOOPBACK_SS)
    assert count_other_sessions(text) == 2


def test_extra_columns_after_the_endpoints_are_ignored() -> None:
    """`-e` and `-i` style fields (uid:, ino:, sk:, timer:(…)) and a cgroup column."""
    listing = ("0 0 10.0.1.5:22 198.51.100.7:50022 timer:(keepalive,119min,0) uid:0 "
               "ino:27311 sk:1 cgroup:/system.slice/sshd.service <->\n"
               "0 36 10.0.1.5:22 203.0.113.9:61000 ino:27400 sk:2\n")
    assert count_other_sessions(output("198.51.100.7 50022 10.0.1.5 22", listing)) == 1


def test_scoped_link_local_addresses_match_without_the_scope() -> None:
    # what ss prints for a scoped socket (iproute2 ss.c sock_addr_print), and the bracket-less
    # form of iproute2 before 4.17
    listing = ("0 0 [fe80::1]%eth0:22 [fe80::2]%eth0:40000\n"
               "0 0 [fe80::1%eth0]:22 [fe80::3%eth0]:40001\n"
               "0 0 fe80::1:22 fe80::4:40002\n")
    assert count_other_sessions(output("fe80::2%eth0 40000 fe80::1%eth0 22", listing)) == 2


def test_an_output_framed_by_a_motd_still_counts() -> None:
    text = "Welcome to Amazon Linux 2023\n" + SANDBOX_SS + "logout\n"
    assert count_other_sessions(text) == 2


def test_crlf_line_ends_change_nothing() -> None:
    assert count_other_sessions(SANDBOX_SS.replace("\n", "\r\n")) == 2


# --- refusals -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "reason"), [
    ("", "no SSH_CONNECTION section"),
    ("sh: 1: Syntax error: Unterminated quoted string\n", "no SSH_CONNECTION section"),
    (output("", LOOPBACK_SS), "SSH_CONNECTION is not set"),
    (output("127.0.0.1 51456 127.0.0.1", LOOPBACK_SS), "is not 'client_ip client_port"),
    (output("127.0.0.1 51456 127.0.0.1 55353 x", LOOPBACK_SS), "is not 'client_ip"),
    (output("127.0.0.300 51456 127.0.0.1 55353", LOOPBACK_SS), "not an IP address"),
    (output("127.0.0.1 65536 127.0.0.1 55353", LOOPBACK_SS), "not a port number"),
    (output("127.0.0.1 -1 127.0.0.1 55353", LOOPBACK_SS), "not a port number"),
    (output("127.0.0.1 ٥١٤٥٦ 127.0.0.1 55353", LOOPBACK_SS), "not a port number"),
    (output("127.0.0.1 0 127.0.0.1 55353", LOOPBACK_SS), "port 0"),
    (f"{MARK_SSH_CONNECTION}\n127.0.0.1 51456 127.0.0.1 55353\n{MARK_END}\n",
     "neither ss nor /proc/net/tcp output"),
    (SANDBOX_SS.replace(f"{MARK_END}\n", ""), "cut short"),
    (SANDBOX_SS[:len(SANDBOX_SS) // 2], "cut short"),
    (SANDBOX_SS.replace(MARK_SS, f"{MARK_SS}\n{MARK_SS}"), "appears twice"),
    (output("127.0.0.1 51456 127.0.0.1 55353", "0 0 127.0.0.1:51456\n"), "unreadable ss line"),
    (output("127.0.0.1 51456 127.0.0.1 55353", "Cannot open netlink socket\n"),
     "unreadable ss line"),
    (output("127.0.0.1 51456 127.0.0.1 55353", "0: 0100007F 0100007F:D839 01\n", via=MARK_PROC),
     "unreadable address '0100007F'"),
    (output("127.0.0.1 51456 127.0.0.1 55353", "0: 0100007F:D839\n", via=MARK_PROC),
     "unreadable /proc/net/tcp line"),
    (output("127.0.0.1 51456 127.0.0.1 55353", "0: 0100007:D839 0100007F:D839 01\n",
            via=MARK_PROC), "expected 8 or 32 hex digits"),
    # our own connection must be in the listing: else the listing did not see sshd's sockets
    (output("127.0.0.1 40000 127.0.0.1 55353", LOOPBACK_SS), "our own connection"),
    (output("127.0.0.1 51456 127.0.0.1 55353", "", via=MARK_PROC),
     "not among the 0 established connections"),
])
def test_what_cannot_be_counted_is_a_value_error_that_says_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        count_other_sessions(text)
    assert reason in str(caught.value)


def test_a_non_text_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected the command's output as text"):
        count_other_sessions(b"bytes")  # type: ignore[arg-type]


def test_a_long_offending_line_is_shortened_in_the_message() -> None:
    listing = "x" * 10_000 + "\n"
    with pytest.raises(ValueError, match="unreadable ss line") as caught:
        count_other_sessions(output("127.0.0.1 51456 127.0.0.1 55353", listing))
    assert len(str(caught.value)) < 300


def mutations(rng: random.Random, text: str) -> str:
    """One random damage: characters dropped, inserted or replaced, lines shuffled, a cut."""
    alphabet = "0123456789abcdefABCDEF:[]%.: \n\t\r=-_()x\x00\u2028\udcff\u0665"
    chars = list(text)
    for _ in range(rng.randint(1, 8)):
        kind = rng.choices(range(5), weights=(4, 4, 4, 1, 1))[0]  # shuffles and cuts: rarer
        at = rng.randrange(len(chars) + 1)
        if kind == 0 and chars:
            del chars[min(at, len(chars) - 1)]
        elif kind == 1:
            chars.insert(at, rng.choice(alphabet))
        elif kind == 2 and chars:
            chars[min(at, len(chars) - 1)] = rng.choice(alphabet)
        elif kind == 3:
            lines = "".join(chars).split("\n")
            rng.shuffle(lines)
            chars = list("\n".join(lines))
        else:
            chars = chars[:at]
    return "".join(chars)


@pytest.mark.parametrize("seed", range(5))
def test_damaged_output_gives_a_count_or_a_value_error_never_another_exception(
        seed: int) -> None:
    """A seeded fuzz (hypothesis is not a test dependency): 2,000 damaged captures each."""
    rng = random.Random(seed)
    sources = [SANDBOX_SS, SANDBOX_PROC, output("::1 57482 ::1 59791", LOOPBACK_SS),
               output("127.0.0.1 51456 127.0.0.1 55353", LOOPBACK_PROC, via=MARK_PROC)]
    outcomes = {"count": 0, "refused": 0}
    for _ in range(2000):
        text = mutations(rng, rng.choice(sources))
        try:
            count = count_other_sessions(text)
        except ValueError:
            outcomes["refused"] += 1
        else:
            assert isinstance(count, int) and count >= 0
            outcomes["count"] += 1
    assert outcomes["count"] and outcomes["refused"]  # the damage hits both ways


# --- the command ---------------------------------------------------------------------------

def test_the_command_is_one_single_quoted_sh_script_printing_every_marker() -> None:
    assert COUNT_COMMAND.startswith("/bin/sh -c '") and COUNT_COMMAND.endswith("'")
    assert COUNT_COMMAND.count("'") == 2  # nothing inside can end the quoting
    for mark in (MARK_SSH_CONNECTION, MARK_SS, MARK_PROC, MARK_END):
        assert mark in COUNT_COMMAND
    assert "ss -Htn state established" not in COUNT_COMMAND  # run by the found path, quoted
    assert '"$ss" -Htn state established' in COUNT_COMMAND
    for place in ("$(command -v ss 2>/dev/null)", "/usr/sbin/ss", "/sbin/ss"):
        assert place in COUNT_COMMAND
    assert SESSION_COUNT_TIMEOUT == 10.0


def test_without_candidates_the_command_goes_straight_to_proc() -> None:
    command = count_command(())
    assert "ss=$c" not in command and "/proc/net/tcp6" in command


@pytest.mark.parametrize("candidate", ["ss; rm -rf /", "/opt/my ss", "$(reboot)", "it's"])
def test_a_candidate_that_could_break_the_quoting_is_refused(candidate: str) -> None:
    with pytest.raises(ValueError, match="unsafe ss candidate"):
        count_command((candidate,))
