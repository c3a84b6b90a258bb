"""`bastion-tray init [PROFILE]`: a profile from what the AWS account shows, then `trust`.

Finds the bastion (Name tag *bastion*, or a security group opening TCP 22), its VPC's private
instances as shell hosts and the RDS databases as forwards on free local ports; offers to create
the backstop's IAM role (adapters/iam_role.py); asks on a terminal (`--yes`: the defaults;
`--dry-run` without a terminal takes them too, since it writes nothing). The
whole new file is validated before it is written, atomically, with a .bak of the previous one;
the existing text is kept as it was and the profile appended.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bastion_tray.cli.init_role import backstop_role
from bastion_tray.cli.prompter import Prompter
from bastion_tray.core.config import Config, expand_path, load_config
from bastion_tray.core.errors import BastionTrayError, CloudError, UsageError
from bastion_tray.core.paths import config_path

# Every command builds its parser with this module, so what only init uses is imported where
# init uses it: discovery and iam_role are boto3 (~120 ms; tests/test_cli_startup.py keeps it
# out of the other commands), configwriter ~2.5 ms of every command's start.
if TYPE_CHECKING:
    from bastion_tray.adapters import discovery as dv
    from bastion_tray.core import configwriter as cw

Plan = TypeVar("Plan", "cw.ForwardPlan", "cw.HostPlan")
# iam_role.DEFAULT_ROLE_NAME, spelled out for --help (tests/test_cli_startup.py checks both)
BACKSTOP_ROLE_NAME = "bastion-tray-backstop"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="build a profile from what the AWS account shows",
                       description="Find the bastion, its VPC's private hosts and the RDS "
                       "databases; write them as a profile. Asks on a terminal unless --yes "
                       "(--dry-run without a terminal takes the defaults too).")
    p.add_argument("profile", nargs="?", help="default: from the bastion's Name, foo-bastion→foo")
    p.add_argument("--region", help="default: AWS_REGION, else the AWS profile's region")
    p.add_argument("--aws-profile", metavar="NAME", help="a profile of ~/.aws/config (also "
                   "written into the profile); default: the standard credential chain")
    p.add_argument("--bastion", metavar="i-…|NAME", help="the bastion's instance id or Name tag")
    p.add_argument("--user", default="ec2-user", help="SSH login user (default: ec2-user)")
    p.add_argument("--identity-file", metavar="PATH", help="private key; default: ~/.ssh/"
                   "KEYPAIR.pem if the instance's key pair is there, else ssh-agent")
    p.add_argument("--port", type=int, default=22, help="the bastion's SSH port (default: 22)")
    p.add_argument("--forward", action="append", default=[], metavar="NAME=[LOCAL:]TARGET",
                   help="instead of the discovered RDS: TARGET is an RDS id, an endpoint or "
                        "HOST:PORT; repeatable")
    p.add_argument("--host", action="append", default=[], metavar="NAME=TARGET",
                   help="instead of the discovered hosts: an instance id or ADDRESS[:PORT]")
    p.add_argument("--no-forwards", action="store_true", help="write no forwards")
    p.add_argument("--no-hosts", action="store_true", help="write no shell hosts")
    p.add_argument("--backstop-role", metavar="create|ARN|none",
                   help="the IAM role with which EventBridge Scheduler stops the bastion when "
                        f"every laptop is gone: create one ({BACKSTOP_ROLE_NAME}), use "
                        "an existing role's ARN, or none; default: asked on a terminal, none "
                        "with --yes")
    p.add_argument("-y", "--yes", action="store_true", help="ask nothing, take the defaults")
    p.add_argument("--trust", action="store_true", help="then run `trust` (starts the bastion)")
    p.add_argument("--force", action="store_true", help="replace a profile of the same name")
    p.add_argument("--dry-run", action="store_true", help="print the profile, write nothing; "
                   "without a terminal it asks nothing and takes the defaults, like --yes")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bastion_tray.adapters import discovery as dv
    from bastion_tray.core import configwriter as cw

    path, source = config_path(args.config)
    existing = load_config(path, source) if path.exists() else None  # must be valid to add to
    forward_specs = [cw.parse_target_spec("--forward", v, local=True) for v in args.forward]
    host_specs = [cw.parse_target_spec("--host", v, local=False) for v in args.host]
    _check_flags(args, existing)
    prompt = Prompter(interactive=not args.yes and _on_a_terminal())
    if not args.yes and not prompt.interactive:
        if not args.dry_run:
            raise UsageError("init asks its questions on a terminal, and there is none",
                             hint="pass --yes to take the defaults, or --dry-run to see them "
                                  "(see bastion-tray init --help)")
        # a preview writes nothing, so it may answer for the user: in a pipe, a script, CI
        print("note: no terminal: --dry-run takes the defaults, as --yes would (a choice that "
              "has none is an error naming its flag)", file=sys.stderr)
    region = args.region or dv.default_region(args.aws_profile)
    if not region:
        raise UsageError("no AWS region: pass --region (e.g. --region ap-northeast-1)")

    with dv.Discovery(dv.search_profile(region, args.aws_profile)) as discovery:
        print(f"searching {discovery.where}…", file=sys.stderr)
        inventory = discovery.inventory()
    for note in inventory.notes:
        print(f"note: {note}", file=sys.stderr)
    bastion = _pick_bastion(inventory, args.bastion, prompt)
    if not bastion.elastic_ip:
        print("note: the bastion has no Elastic IP: its address changes at every start and "
              "`trust` records keys per address; give it an EIP, or pin host_key", file=sys.stderr)
    name = _profile_name(args, bastion, existing, prompt)
    taken = {f.local_port for p in (existing.profiles.values() if existing else ())
             if p.name != name for f in p.forwards.values()}
    forwards = [] if args.no_forwards else _forwards(inventory, bastion, forward_specs, taken)
    hosts = [] if args.no_hosts else _hosts(inventory, bastion, host_specs)
    forwards = _confirm(prompt, "forwards", forwards, bool(forward_specs))
    hosts = _confirm(prompt, "hosts", hosts, bool(host_specs))
    role = backstop_role(args, prompt, region, bastion, name)
    plan = cw.ProfilePlan(
        name, region, args.aws_profile,
        cw.BastionPlan(bastion.instance_id, args.user, args.port, _identity_file(args, bastion),
                       note=bastion.summary(state=False), backstop_role=role),
        tuple(hosts), tuple(forwards), note=f"written by bastion-tray init in {region}")

    text = cw.new_config_text(plan) if existing is None else cw.add_profile_text(
        path.read_bytes().decode("utf-8"), plan, replace=args.force)
    cw.validated(text, path)  # nothing is written unless the whole new file loads
    print(f"\nprofile {name} for {path}:\n\n{cw.render_profile(plan)}")
    if args.dry_run:
        print("(--dry-run: nothing was written)")
        return 0
    if not prompt.confirm(f"Write profile {name} to {path}?", default=True):
        made_role = role is not None and args.backstop_role in (None, "create")
        print("nothing was written" + (f" (the IAM role stays; a later init can use it: "
                                       f"--backstop-role {role})" if made_role else ""))
        return 1
    backup = _write(path, text, existed=existing is not None)
    print(f"wrote profile {name} to {path}"
          + (f" (the previous file is in {backup})" if backup else ""))
    from bastion_tray.cli.commands import audit

    audit.after_init(path, source, name)  # printed only: a fail there is not init's failure
    return _next_steps(args, path, source, plan, prompt)


def _on_a_terminal() -> bool:
    """Whether questions can be asked: stdin is a terminal (it is None under pythonw)."""
    return sys.stdin is not None and sys.stdin.isatty()


def _check_flags(args: argparse.Namespace, existing: Config | None) -> None:
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected a port number 1–65535")
    if (args.no_forwards and args.forward) or (args.no_hosts and args.host):
        raise UsageError("--no-forwards/--no-hosts contradict --forward/--host")
    for flag, names in (("--forward", [v.partition("=")[0] for v in args.forward]),
                        ("--host", [v.partition("=")[0] for v in args.host])):
        if len(set(names)) < len(names):
            raise UsageError(f"{flag}: each NAME may be given once (got {', '.join(names)})")
    if args.profile is not None:
        _check_name(args.profile, existing, args.force)
    if args.identity_file and not expand_path(args.identity_file).is_file():
        raise UsageError(f"--identity-file {args.identity_file}: no such file")
    role = args.backstop_role
    if role is not None and role not in {"create", "none"} and not role.startswith("arn:"):
        # the ARN's own shape is the config's to check, like every value init writes
        raise UsageError(f"--backstop-role {role}: expected create, none or an IAM role ARN "
                         "(arn:aws:iam::123456789012:role/NAME)")


def _check_name(name: str, existing: Config | None, force: bool) -> None:
    from bastion_tray.core import configwriter as cw

    if not cw.valid_name(name):
        raise UsageError(f"profile name {name!r}: expected letters, digits, '-', '_' or '.' "
                         "(it becomes part of ssh Host names)")
    if existing is not None and name in existing.profiles and not force:
        raise UsageError(f"profile {name!r} already exists in {existing.path}",
                         hint="pass --force to replace it, or choose another PROFILE name")


def _pick_bastion(inventory: dv.Inventory, wanted: str | None,
                  prompt: Prompter) -> dv.FoundInstance:
    candidates = inventory.named(wanted) if wanted else inventory.candidates
    listing = "\n".join(f"  {n}) {i.instance_id}  {i.summary()}\n       why: "
                        + ("; ".join(i.bastion_reasons) or "--bastion")
                        for n, i in enumerate(candidates, 1))
    if wanted and len(candidates) != 1:
        raise UsageError(f"--bastion {wanted}: {len(candidates)} live instances in "
                         f"{inventory.where} have that id or Name tag\n{listing}".rstrip(),
                         hint="pass the instance id" if candidates else
                         "check the id or Name, --region and --aws-profile")
    if not candidates:
        raise CloudError(
            f"no bastion candidate in {inventory.where}: none of its {len(inventory.instances)} "
            "live instances has a Name tag matching *bastion* or a security group that opens "
            "TCP 22 to an address range",
            hint="pass --bastion i-…|NAME, or check --region and --aws-profile")
    if len(candidates) > 1 and not prompt.interactive:
        raise UsageError(f"{len(candidates)} bastion candidates in {inventory.where}:\n{listing}",
                         hint="pass --bastion i-… or --bastion NAME to pick one")
    print(f"bastion{' candidates' if len(candidates) > 1 else ''}:\n{listing}")
    return candidates[prompt.choose("Which one is the bastion?", len(candidates))
                      if len(candidates) > 1 else 0]


def _profile_name(args: argparse.Namespace, bastion: dv.FoundInstance, existing: Config | None,
                  prompt: Prompter) -> str:
    from bastion_tray.core import configwriter as cw

    if args.profile:
        return str(args.profile)
    default = cw.profile_name_for(bastion.name)
    if prompt.interactive and not args.force:  # offer foo-2 rather than a name that is taken
        default = cw.unique_name(default, existing.profiles if existing else ())
    while True:
        name = prompt.ask(f"Profile name [{default}]:", default)
        try:
            _check_name(name, existing, args.force)
            return name
        except UsageError as exc:
            if not prompt.interactive:
                raise
            print(f"  {exc.message}")


def _forwards(inventory: dv.Inventory, bastion: dv.FoundInstance, specs: Sequence[cw.TargetSpec],
              taken: set[int]) -> list[cw.ForwardPlan]:
    from bastion_tray.core import configwriter as cw

    plans = []
    if not specs:
        for other in inventory.databases:
            if other.vpc_id not in (None, bastion.vpc_id):
                print(f"note: skipped RDS {other.identifier}: in {other.vpc_id}, not the "
                      f"bastion's {bastion.vpc_id} (add it: --forward NAME={other.identifier})",
                      file=sys.stderr)
        specs = [cw.TargetSpec(cw.sanitize_name(d.identifier) or "db", d.identifier, None, None)
                 for d in inventory.databases
                 if d.address and d.port and d.vpc_id in (None, bastion.vpc_id)]
    names: list[str] = []
    for spec in specs:
        engine, note = None, ""
        host, port = spec.target, spec.port
        if port is None:
            db = inventory.database(spec.target)
            if db is None:
                known = ", ".join(d.identifier for d in inventory.databases) or "none"
                raise UsageError(f"--forward {spec.name}={spec.target}: no RDS DB instance or "
                                 f"cluster {spec.target!r} in {inventory.where} (found: {known})",
                                 hint="give the address and port: --forward NAME=HOST:PORT")
            engine, host, port = db.engine, db.address or "", db.port or 0
            note = f"RDS {db.engine} {db.kind} {db.identifier}"
        local = spec.local_port or cw.choose_local_port(cw.local_port_base(engine, port), taken,
                                                        port_is_free)
        taken.add(local)
        names.append(cw.unique_name(spec.name, names))
        plans.append(cw.ForwardPlan(names[-1], local, host, port, note))
    return plans


def _hosts(inventory: dv.Inventory, bastion: dv.FoundInstance,
           specs: Sequence[cw.TargetSpec]) -> list[cw.HostPlan]:
    from bastion_tray.core import configwriter as cw

    plans: list[cw.HostPlan] = []
    for spec in specs:  # an instance id or Name tag becomes its private IP; the rest stays
        found = [i for i in inventory.named(spec.target) if i.private_ip]
        if spec.target.startswith("i-") and len(found) != 1:
            raise UsageError(f"--host {spec.name}={spec.target}: no live instance with a "
                             f"private IP has that id in {inventory.where}")
        hostname, note = (found[0].private_ip, found[0].label) if len(found) == 1 else (
            spec.target, "")
        plans.append(cw.HostPlan(spec.name, hostname or spec.target, spec.port, note))
    if specs:
        return plans
    for i in inventory.private_hosts(bastion):  # named after their Name tag, sanitized
        name = cw.unique_name(cw.host_name_for(i.name or "", bastion.name) or i.instance_id,
                              [h.name for h in plans])
        plans.append(cw.HostPlan(name, i.private_ip or "", None, i.label))
    return plans


def _confirm(prompt: Prompter, what: str, plans: list[Plan], explicit: bool) -> list[Plan]:
    from bastion_tray.core import configwriter as cw

    if not plans:
        print(f"{what}: none")
        return plans
    lines = [f"  {n}) {cw.plan_line(p)}" for n, p in enumerate(plans, 1)]
    print(f"{what}:\n" + "\n".join(lines))
    if explicit or not prompt.interactive:
        return plans
    question = f"Keep which {what}? [Enter: all · none · numbers like 1 3]"
    return [plans[n] for n in prompt.numbers(question, "all", len(plans), several=True)]


def port_is_free(port: int) -> bool:
    """Whether a forward could listen on 127.0.0.1:`port` now (binds it, as forward.py does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if os.name == "posix":  # TIME_WAIT leftovers do not stop a forward, so not us either
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _identity_file(args: argparse.Namespace, bastion: dv.FoundInstance) -> str | None:
    if args.identity_file:  # ~ and $VARS stay for the config to expand; the rest is made absolute
        value = str(args.identity_file)
        return value if value.startswith(("~", "$")) else str(Path(value).resolve())
    guesses = [f"~/.ssh/{bastion.key_name}{ext}" for ext in (".pem", "")] if bastion.key_name \
        else []
    found = next((g for g in guesses if expand_path(g).is_file()), None)
    if guesses:
        print(f"identity file: {found} (the instance's key pair)" if found else
              f"note: the bastion's key pair is {bastion.key_name!r}: pass --identity-file PATH "
              "unless ssh-agent holds it", file=sys.stderr)
    return found


def _write(path: Path, text: str, *, existed: bool) -> Path | None:
    """Atomically replace `path` with `text` (tmp + os.replace); returns the backup, if any."""
    backup = path.with_name(path.name + ".bak") if existed else None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
            os.chmod(path.parent, 0o700)  # the app's own directory: private, like the others
        if backup is not None:
            shutil.copy2(path, backup)  # keeps the mode, which the new file takes over too
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                  encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if backup is not None:
            os.chmod(tmp, stat.S_IMODE(backup.stat().st_mode))
        os.replace(tmp, path)
    except OSError as exc:
        raise BastionTrayError(f"cannot write {exc.filename or path}: {exc.strerror}",
                               hint=f"{path} is unchanged") from None
    finally:
        tmp.unlink(missing_ok=True)  # gone after os.replace; a leftover after a failure
    return backup


def _next_steps(args: argparse.Namespace, path: Path, source: str, plan: cw.ProfilePlan,
                prompt: Prompter) -> int:
    cli = "bastion-tray" + (f" --config {shlex.quote(str(path))}" if source == "--config" else "")
    trust_cmd = f"{cli} trust {plan.name}"
    use = (f"{cli} connect {plan.name} {plan.forwards[0].name}    # then 127.0.0.1:"
           f"{plan.forwards[0].local_port}" if plan.forwards else f"{cli} up {plan.name}")
    print(f"next:\n  {trust_cmd}    # check and record the bastion's host key (starts the "
          f"bastion)\n  {use}")
    if not (args.trust or (prompt.interactive and prompt.confirm(
            "Trust the bastion's host key now? (starts the bastion)", default=False))):
        return 0
    from bastion_tray.cli.commands import trust

    try:
        return trust.run(argparse.Namespace(config=str(path), profile=plan.name, host=None,
                                            yes=args.yes, fingerprint=None))  # the bastion
    except BastionTrayError as exc:
        exc.hint = f"{exc.hint}; " if exc.hint else ""
        exc.hint += f"the profile is written: run `{trust_cmd}` again"
        raise
