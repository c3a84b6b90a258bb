"""One profile's lifecycle as data: a frozen state, events, and a pure `step`.

`step(state, event, now) -> (state, effects)` is the only place that decides anything: when to
start or stop the instance, when to connect, reconnect or give up, when the idle stop is due.
The service (service/runtime.py) feeds it events — requests, what EC2 said, the link coming up
or going away, ticks — and carries out the effects it returns, in order. It decides nothing.

Races become states: a stop in progress is `Phase.STOPPING`, and no event in that phase ever
yields a start or a connect; a late answer of an abandoned bring-up carries its attempt number
and is dropped (a link that arrives late is closed). Every timing is a field of `Timings`.
"""

from bastion_tray.core.lifecycle.effects import (
    CallCloud,
    CloseConnections,
    CloseLink,
    DropLink,
    Effect,
    KeepLink,
    Log,
    OpenLink,
    Publish,
    Resolve,
    Result,
    Save,
    StopFinished,
    WaitSsh,
)
from bastion_tray.core.lifecycle.events import (
    Activity,
    CallDone,
    CallFailed,
    ClearError,
    Demand,
    Event,
    Exit,
    ForwardListening,
    GiveUp,
    Keep,
    LinkFailed,
    LinkLost,
    LinkUp,
    Refresh,
    Seen,
    SshAnswered,
    SshFailed,
    StopRequested,
    Tick,
)
from bastion_tray.core.lifecycle.state import (
    GONE,
    KEEP_MAX,
    CloudCall,
    Goal,
    Lifecycle,
    Link,
    Persisted,
    Phase,
    Setup,
    Timings,
    initial,
)
from bastion_tray.core.lifecycle.step import step

__all__ = [
    "GONE",
    "KEEP_MAX",
    "Activity",
    "CallCloud",
    "CallDone",
    "CallFailed",
    "ClearError",
    "CloseConnections",
    "CloseLink",
    "CloudCall",
    "Demand",
    "DropLink",
    "Effect",
    "Event",
    "Exit",
    "ForwardListening",
    "GiveUp",
    "Goal",
    "Keep",
    "KeepLink",
    "Lifecycle",
    "Link",
    "LinkFailed",
    "LinkLost",
    "LinkUp",
    "Log",
    "OpenLink",
    "Persisted",
    "Phase",
    "Publish",
    "Refresh",
    "Resolve",
    "Result",
    "Save",
    "Seen",
    "Setup",
    "SshAnswered",
    "SshFailed",
    "StopFinished",
    "StopRequested",
    "Tick",
    "Timings",
    "WaitSsh",
    "initial",
    "step",
]
