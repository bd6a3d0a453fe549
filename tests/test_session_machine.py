"""The session state machine in simulated time: a fake clock and launcher (tests/fakes.py),
with the real ledger, records and files. Restart storms of minutes run in milliseconds here;
tests/test_restart.py and tests/test_jupyter_launcher.py keep a few of them end to end."""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_driver import Stop, worlds_fixture  # noqa: F401 - a fixture
from fakes import EXITS, MISSING, NEVER, READY, Behaviour, dies

import xsupervise
from xsupervise.host.errors import ServerExited, ServerNotFound, SessionFailed
from xsupervise.launch.settings import RestartPolicy
from xsupervise.session import session as _session
from xsupervise.session.local_ops import session_status
from xsupervise.session.session import Event, ImpossibleTransition, Mode, Session, State, transition

# The policy of test_restart.py's CLI tests.
FAST_POLICY = {
    "backoff_initial": 0.2,
    "reset_after": 30.0,
    "start_limit_burst": 3,
    "start_limit_interval": 60.0,
    "failed_cooldown": 300.0,
}


@pytest.fixture
def transitions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[State, Event, State]]:
    """Every transition the sessions make, in order."""
    seen: list[tuple[State, Event, State]] = []

    def recording(state: State, event: Event) -> State:
        following = transition(state, event)
        seen.append((state, event, following))
        return following

    monkeypatch.setattr(_session, "transition", recording)
    return seen


def events_of(log: list[str]) -> Callable[[Session, Event], None]:
    """Log what a listener learns from each event, in words."""

    def told(session: Session, event: Event) -> None:
        if event is Event.VERIFIED:
            log.append("ready" if session.restarts == 0 else "restarted")
        elif event in (Event.BACKOFF, Event.COOL_DOWN):
            log.append("waiting")
        else:
            log.append(event.value)

    return told


# -- the table ---------------------------------------------------------------------------------


def test_the_docstring_table_is_the_transition_function():
    """Every (state, event) pair: the next state the table shows, or ImpossibleTransition."""
    lines = [line.split() for line in inspect.getdoc(transition).splitlines()]
    header = next(i for i, words in enumerate(lines) if words[:1] == ["state/event"])
    columns = [Event[name] for name in lines[header][1:]]
    rows = {State(words[0]): words[1:] for words in lines[header + 1 : header + 1 + len(State)]}
    assert sorted(columns, key=list(Event).index) == list(Event)
    assert set(rows) == set(State)
    checked = 0
    for state, cells in rows.items():
        assert len(cells) == len(columns)
        for event, cell in zip(columns, cells, strict=True):
            if cell == "-":
                with pytest.raises(ImpossibleTransition, match=f"from {state.value} on"):
                    transition(state, event)
            else:
                assert transition(state, event) is State(cell), (state, event)
            checked += 1
    assert checked == len(State) * len(Event)


def test_states_read_as_the_strings_on_disk_and_in_replies():
    assert State.READY == "ready" and f"{State.BACKOFF}" == "backoff"
    assert [state.value for state in State] == [
        "starting",
        "ready",
        "backoff",
        "failed",
        "stopping",
        "abandoned",
    ]


def test_every_state_change_of_a_session_goes_through_the_table():
    tree = ast.parse(inspect.getsource(_session))
    # The session's code: the module's functions and Session's methods. Another class's
    # ``state`` (a budget Decision's verdict) is a value, not a session's state.
    tree.body = [
        node for node in tree.body if not isinstance(node, ast.ClassDef) or node.name == "Session"
    ]
    assignments = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign | ast.AugAssign)
                else []
            )
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Attribute) and leaf.attr == "state":
                        assignments.append((function.name, ast.unparse(node.value)))
    assert assignments == [("__init__", "State.STARTING"), ("_go", "transition(self.state, event)")]


def _package_trees():
    package = Path(xsupervise.__file__).parent
    for path in sorted(package.rglob("*.py")):
        yield str(path.relative_to(package)), ast.parse(path.read_text())


def test_one_authority_for_state_in_the_whole_package():
    # Every state word comes from session/session.py: no module sets a state, writes one into
    # a record, compares one or tells an event as a plain string; only Session._go (and
    # local_records, for what a record of a dead supervisor shows) sets one at all.
    from xsupervise.session.session import Event, PoolState, State

    words = {*State, *PoolState, *(event.value for event in Event)}
    found = []
    for module, tree in _package_trees():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                where = f"{module}:{node.__dict__.get('lineno')}"
                if isinstance(node, ast.Assign):
                    allowed = (module, function.name) in {
                        ("session/session.py", "__init__"),
                        ("session/session.py", "_go"),
                        ("session/local_ops.py", "local_records"),
                    }
                    for target in node.targets:
                        sets = isinstance(target, ast.Attribute) and target.attr == "state"
                        if sets and not allowed:
                            found.append(f"{where} sets a state in {function.name}")
                if isinstance(node, ast.Compare):
                    sides = [node.left, *node.comparators]
                    texts = [
                        side.value
                        for side in sides
                        if isinstance(side, ast.Constant) and isinstance(side.value, str)
                    ]
                    if any(word in words for word in texts) and "state" in ast.unparse(node):
                        found.append(f"{where} compares a state with a string")
                if isinstance(node, ast.Call):
                    name = ast.unparse(node.func)
                    arguments = [*node.args, *(k.value for k in node.keywords if k.arg == "state")]
                    if name.endswith(("on_event", ".save")) and any(
                        isinstance(a, ast.Constant) and a.value in words for a in arguments
                    ):
                        found.append(f"{where} passes a state or event as a string to {name}")
    assert not found, found


def test_no_test_listens_for_an_event_by_a_string():
    # An on_event that compares with a string never fires since events are Event members:
    # a test written that way would pass without testing anything.
    found = []
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name):
                strings = [
                    c
                    for c in node.comparators
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                ]
                if node.left.id == "event" and strings:
                    found.append(f"{path.name}:{node.lineno}")
    assert not found, found


def test_the_modes_mean_what_the_four_booleans_meant():
    # (kind, retry_first_start, reclaim, count_environment_problems) as each caller passed them
    assert {
        mode: (mode.kind, mode.retries_first_start, mode.reclaims, mode.counts_environment_problems)
        for mode in Mode
    } == {
        Mode.CLI: ("cli", False, True, False),
        Mode.RELAUNCHED: ("cli", False, True, True),
        Mode.DAEMON_CONFIGURED: ("daemon", True, False, False),
        Mode.DAEMON_REQUESTED: ("daemon", False, False, False),
        Mode.DAEMON_POOL: ("daemon", True, False, False),
        Mode.DAEMON_LEASED: ("daemon", False, False, False),
    }
    # Only a leased display ends with its server (issue 20: its death is its lessee's).
    assert [mode for mode in Mode if mode.ends_with_its_server] == [Mode.DAEMON_LEASED]
    assert [mode for mode in Mode if not mode.restarts_on_its_number] == [Mode.DAEMON_POOL]
    # give_up_when_failed was no_wait; once ready, every session but a configured one gives up
    for mode in Mode:
        assert mode.gives_up_when_failed(no_wait=True, ready_once=False)
        assert not mode.gives_up_when_failed(no_wait=False, ready_once=False)
        retries = mode in (Mode.DAEMON_CONFIGURED, Mode.DAEMON_POOL)
        assert mode.gives_up_when_failed(False, True) is not retries
    assert [mode for mode in Mode if mode.counts_app_failures] == [Mode.RELAUNCHED]


# -- restarts ----------------------------------------------------------------------------------


def test_a_thousand_restarts_in_simulated_time(worlds, transitions):
    """Servers that prove themselves (up past reset_after) and die restart at once, on the same
    number, as often as they die: 1,000 restarts, 17 simulated hours, no budget spent."""
    world = worlds([dies(61.0)], reset_after=60.0)
    log: list[str] = []
    session = world.session("thousand", Mode.CLI, on_event=events_of(log))
    run = world.run(session)
    began = time.perf_counter()
    assert not run.advance(until=0.05 + (61.0 + 0.05) * 1000 + 1.0)  # each is ready in 0.05 s
    took = time.perf_counter() - began
    assert session.restarts == 1000 and len(world.launcher.spawned) == 1001
    assert log == ["ready"] + ["died", "restarted"] * 1000
    assert {server.number for server in world.launcher.spawned} == {session.number}
    with world.ledger("thousand").update() as history:
        assert (history.starts, history.in_a_row, history.failures) == (1001, 0, [])
        assert history.failed_at is None and history.in_flight == {}
    [record] = session_status(world.runtime, "thousand", session.policy, world.clock.wall())
    assert (record["state"], record["restarts"], record["display"]) == (
        "ready",
        1000,
        session.display,
    )
    assert isinstance(run.stop(), Stop) and session.state is State.STOPPING
    assert world.launcher.spawned[-1].exit_status == -15  # stopped, not left running
    E = Event  # noqa: N806
    assert [event for _, event, _ in transitions] == [E.START, E.VERIFIED] + [
        E.DIED,
        E.START,
        E.VERIFIED,
    ] * 1000 + [E.STOP]
    print(f"1,000 restarts in {took * 1000:.0f} ms")
    assert took < 30  # real seconds for 61,000 simulated ones, on a loaded 2-core machine


def test_killed_server_backs_off_by_the_policy_then_fails_and_reset_revives_it(worlds):
    """test_restart.py's CLI test, in simulated time: delays by the policy, the same number,
    FAILED after more than the burst, refused with --no-wait, revived by a reset."""
    world = worlds([dies(0.5)], **FAST_POLICY)
    rules = RestartPolicy(**FAST_POLICY)
    delays: list[float] = []

    def on_event(session: Session, event: Event) -> None:
        if event is Event.BACKOFF:
            assert session.state is State.BACKOFF
            delays.append(session.next_retry_at - world.clock.wall())

    session = world.session("killme", Mode.CLI, on_event=on_event)
    run = world.run(session)
    assert run.advance(until=3600.0)  # it ends by itself
    assert isinstance(run.error, SessionFailed) and session.state is State.FAILED
    assert session.restarts == 3 and len(world.launcher.spawned) == 4
    assert {server.number for server in world.launcher.spawned} == {101}
    for failures, delay in enumerate(delays, 1):  # jitter: half to all of the doubling base
        base = min(rules.backoff_max, rules.backoff_initial * 2 ** (failures - 1))
        assert base / 2 - 1e-6 <= delay <= base + 1e-6, (failures, delay, delays)
    assert len(delays) == 3 and delays == sorted(delays) and delays[-1] > delays[0]
    assert "session killme is FAILED: 4 failed starts in 60 s (limit 3)" in str(run.error)
    assert "xsupervise reset killme" in str(run.error)
    held = session_status(world.runtime, "killme", rules, world.clock.wall())
    assert [(entry["state"], entry["supervisor_pid"]) for entry in held] == [("failed", None)]

    refused = world.run(world.session("killme", Mode.CLI, no_wait=True))
    assert isinstance(refused.finish(), SessionFailed) and "is FAILED" in str(refused.error)
    assert len(world.launcher.spawned) == 4
    assert world.ledger("killme").reset()
    revived = world.run(world.session("killme", Mode.CLI))
    assert not revived.advance(until=world.clock.now + 0.5)
    assert revived.session.state is State.READY and len(world.launcher.spawned) == 5
    assert isinstance(revived.stop(), Stop)


def test_a_failed_start_is_raised_by_the_cli_and_retried_by_a_configured_session(worlds):
    world = worlds([EXITS, NEVER, READY], displayfd_timeout=2.0)
    cli = world.run(world.session("first", Mode.CLI))
    assert isinstance(cli.finish(), ServerExited)
    assert cli.session.state is State.BACKOFF  # counted: the next start waits
    log: list[str] = []
    configured = world.run(world.session("first", Mode.DAEMON_CONFIGURED, on_event=events_of(log)))
    assert not configured.advance(until=60.0)
    assert configured.session.state is State.READY
    assert log == ["waiting", "start-failed", "waiting", "ready"]  # a timeout, then ready
    with world.ledger("first").update() as history:
        assert history.in_a_row == 2 and "deadline" in history.last_failure
    configured.stop()


def test_after_the_cooldown_one_try_on_probation_and_a_reset_is_seen_within_a_second(worlds):
    """A configured session whose server always exits: FAILED after more than the burst,
    then exactly one try per cool-down (a failed probation is FAILED again at once)."""
    script: list[Behaviour] = [EXITS]
    world = worlds(
        lambda index: script[0], start_limit_burst=1, failed_cooldown=100.0, backoff_initial=0.1
    )
    log: list[str] = []
    session = world.session("probation", Mode.DAEMON_CONFIGURED, on_event=events_of(log))
    run = world.run(session)
    assert not run.advance(until=10.0)
    assert session.state is State.FAILED and len(world.launcher.spawned) == 2
    for cooldown in range(1, 6):
        failed_at = world.ledger("probation").read().failed_at
        assert session.next_retry_at == pytest.approx(failed_at + 100.0)
        retry_at = session.next_retry_at - world.clock.epoch  # on the monotonic clock
        assert not run.advance(until=retry_at - 0.01)
        assert len(world.launcher.spawned) == 1 + cooldown  # nothing during the cool-down
        assert not run.advance(until=retry_at + 0.5)
        assert len(world.launcher.spawned) == 2 + cooldown and session.state is State.FAILED
    script[0] = READY
    assert not run.advance(until=world.clock.now + 10.0)
    assert session.state is State.FAILED and len(world.launcher.spawned) == 7  # waits...
    reset_at = world.clock.now
    assert world.ledger("probation").reset()
    assert not run.advance(until=reset_at + 1.0)  # ...and notices a reset within a second
    assert len(world.launcher.spawned) == 8
    assert not run.advance(until=reset_at + 1.1)
    assert session.state is State.READY and log[-1] == "ready"
    run.stop()


def test_a_waiting_supervisor_is_released_by_reset(worlds):
    """test_restart.py's --no-wait failures then a waiting start, in simulated time."""
    world = worlds([EXITS, EXITS, READY], start_limit_burst=1)
    for _ in range(2):
        failed = world.run(world.session("flaky", Mode.CLI, no_wait=True)).finish()
        assert isinstance(failed, ServerExited) and failed.exit_code == 3
    waiting = world.run(world.session("flaky", Mode.CLI))
    assert not waiting.advance(until=world.clock.now + 30.0)
    assert waiting.session.state is State.FAILED and len(world.launcher.spawned) == 2
    reset_at = world.clock.now
    assert world.ledger("flaky").reset()
    assert not waiting.advance(until=reset_at + 1.0)  # noticed within a second
    assert len(world.launcher.spawned) == 3
    assert not waiting.advance(until=reset_at + 1.1)
    assert waiting.session.state is State.READY
    assert isinstance(waiting.stop(), Stop)


def test_a_stop_while_backing_off_or_starting_ends_the_session_cleanly(worlds, transitions):
    world = worlds([dies(0.1), NEVER], backoff_initial=30.0)
    backing_off = world.run(world.session("patient", Mode.CLI))
    assert not backing_off.advance(until=5.0)
    assert backing_off.session.state is State.BACKOFF
    assert isinstance(backing_off.stop(), Stop)
    assert backing_off.session.state is State.BACKOFF  # no server: no stopping state
    starting = world.run(world.session("patient2", Mode.CLI))
    assert not starting.advance(until=world.clock.now + 1.0)
    assert starting.session.state is State.STARTING
    assert isinstance(starting.stop(), Stop)
    assert world.launcher.spawned[-1].exit_status == -15
    with world.ledger("patient2").update() as history:
        assert history.in_flight == {} and history.failures == []  # a stop is no failure
    assert Event.STOP not in [event for _, event, _ in transitions]


# -- environment problems and app failures ------------------------------------------------------


def test_a_missing_server_binary_spends_the_budget_only_where_counted(worlds):
    world = worlds([MISSING])
    for _ in range(2):  # the CLI: exit 5, and nothing spent
        cli = world.run(world.session("nox", Mode.CLI, on_event=events_of(log := [])))
        assert isinstance(cli.finish(), ServerNotFound) and log == []
        with world.ledger("nox").update() as history:
            assert history.failures == [] and history.in_flight == {}
    relaunched_runs = 0
    while True:  # relaunched: every exit counts, until the name is FAILED
        run = world.run(world.session("nox2", Mode.RELAUNCHED))
        relaunched_runs += 1
        if not run.advance(until=world.clock.now + 100.0):  # past any backoff, not the cool-down
            break
        assert isinstance(run.error, ServerNotFound)
    assert run.session.state is State.FAILED and relaunched_runs == 7  # burst 5, +1, waiting
    log = []
    configured = world.run(world.session("nox3", Mode.DAEMON_CONFIGURED, on_event=events_of(log)))
    assert not configured.advance(until=world.clock.now + 200.0)
    assert configured.session.state is State.FAILED and log.count("start-failed") == 6
    assert world.launcher.spawned == []


def test_a_record_that_cannot_be_written_ends_the_session_with_that_error(worlds, monkeypatch):
    # The record is written as the state changes (Session._go). A write that fails (a full
    # disk) must end the session with that error, its server stopped: never a false "bug in
    # xsupervise" from the table, never a server left running.
    world = worlds([dies(0.5)])
    session = world.session("full", Mode.CLI)
    run = world.run(session)
    assert not run.advance(until=0.1) and session.state is State.READY
    server = world.launcher.spawned[-1]
    real_save = session.files.save

    def full_disk(**changes):
        if "state" in changes:
            raise OSError(28, "No space left on device")
        real_save(**changes)

    monkeypatch.setattr(session.files, "save", full_disk)
    assert run.advance()  # the server dies at 0.5 s: DIED is written, and fails
    assert isinstance(run.error, OSError) and run.error.errno == 28, run.error
    assert server.exit_status is not None  # stopped and reaped

    again = world.run(world.session("full2", Mode.CLI))
    assert not again.advance(until=world.clock.now + 0.1)
    monkeypatch.setattr(again.session.files, "save", full_disk)
    assert again.advance(error=OSError(5, "a stop"))  # a stop while ready: STOP is written
    assert isinstance(again.error, OSError) and again.error.errno == 28
    assert world.launcher.spawned[-1].exit_status is not None  # stopped all the same
