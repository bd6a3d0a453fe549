#!/bin/bash
# Runs inside the booted container (systemd as PID 1), as the unit xsupervise-checks. Writes
# one "PASS name" / "FAIL name: why" line per check to $1/results, then the unit powers off.
set -u
OUT=${1:-/checks-out}
X=/opt/xsupervise/bin/xsupervise
BURST=3
CHECK="$X check"
: >"$OUT/results.tmp"
pass() { echo "PASS $1" >>"$OUT/results.tmp"; }
fail() { echo "FAIL $1: $2" >>"$OUT/results.tmp"; }
check() { local name=$1; shift; local why; if why=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(echo "$why" | tail -n 3 | tr '\n' ' ')"; fi; }
# until SECONDS COMMAND...: retry COMMAND every 0.2 s (nothing to wait on across processes)
until_ok() { local end=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || { "$@"; return 1; }; sleep 0.2; done; }
field() { "$X" list --json | python3 -c "import json,sys; print(next((s['$2'] for s in json.load(sys.stdin) if s['name'] == '$1'), ''))"; }
show() { systemctl show -P "$2" "$1"; }
xcheck() { $CHECK "$@"; }  # `xsupervise check`, or the module until the CLI lists it

t_verify() {  # a minimal system: no procps (/bin/kill), no man pages
    local err; [ ! -e /bin/kill ] || echo "note: /bin/kill exists"
    err=$(cd /etc/systemd/system && systemd-analyze verify xsupervise.service xsupervise.socket xsupervise@99.service 2>&1) || { echo "$err"; return 1; }
    [ -z "$err" ] || { echo "stderr: $err"; return 1; }
}

t_socket_alone() {
    systemctl start xsupervise.socket || return 1
    [ -S /run/xsupervise/control.sock ] || { echo "no socket file"; return 1; }
    [ "$(show xsupervise.service ActiveState)" = inactive ] || { echo "service is $(show xsupervise.service ActiveState) before any client"; return 1; }
}

t_serve_refusal() {  # serve by hand on the socket unit's path: refused, naming it; no activation
    local err code=0
    err=$(timeout 20 "$X" serve 2>&1) || code=$?
    [ "$code" = 5 ] || { echo "exit $code: $err"; return 1; }
    case $err in *"systemctl status xsupervise.socket"*) ;; *) echo "$err"; return 1 ;; esac
    [ "$(show xsupervise.service ActiveState)" = inactive ] || { echo "the probe activated the service"; return 1; }
    command -v xsupervise >/dev/null || { echo "xsupervise is not on PATH"; return 1; }
}

t_activation() {  # the first client request starts the service (it answers before READY=1)
    "$X" status >/dev/null || return 1
    case $(show xsupervise.service ActiveState) in activating|active) ;; *) echo "service is $(show xsupervise.service ActiveState)"; return 1 ;; esac
    until_ok 60 sh -c '[ "$(systemctl show -P ActiveState xsupervise.service)" = active ]'
}

t_notify_ready() {  # start returns at READY=1, when the configured display already answers
    systemctl stop xsupervise.service && systemctl start xsupervise.service || return 1
    xcheck x --timeout 2 || return 1
    local text; text=$(show xsupervise.service StatusText)
    [ "$(show xsupervise.service SubState)" = running ] || { echo "substate $(show xsupervise.service SubState)"; return 1; }
    case $text in *ready*) ;; *) echo "status text: $text"; return 1 ;; esac
}

t_configured_display() {
    DISPLAY=:50 XAUTHORITY=$(field x xauthority) xdpyinfo >/dev/null
}

t_reload() {  # a session added to the config comes up after systemctl reload; same main pid
    local pid; pid=$(show xsupervise.service MainPID)
    printf '\n[session.y]\ndisplay = ":51"\n' >>/etc/xsupervise/config.toml
    systemctl reload xsupervise.service || return 1
    until_ok 30 xcheck y --timeout 2 || return 1
    [ "$(show xsupervise.service MainPID)" = "$pid" ] || { echo "main pid changed"; return 1; }
}

t_template_restart() {
    systemctl start xsupervise@99.service || return 1
    xcheck :99 --timeout 2 || return 1
    local old; old=$(field display-99 server_pid)
    [ -n "$old" ] || { echo "no server pid"; return 1; }
    kill -KILL "$old"
    until_ok 30 sh -c "[ \"\$($X list --json | python3 -c \"import json,sys; print([s['server_pid'] for s in json.load(sys.stdin) if s['name'] == 'display-99'][0])\")\" != $old ] && $CHECK :99 --timeout 2" || return 1
    [ "$(show xsupervise@99.service ActiveState)" = active ] || { echo "unit is $(show xsupervise@99.service ActiveState)"; return 1; }
}

t_containment() {  # the unit's X server runs in a PID namespace of its own (root)
    systemctl start xsupervise@99.service || return 1
    xcheck :99 --timeout 2 || return 1
    local kind pid; kind=$(field display-99 containment); pid=$(field display-99 server_pid)
    [ "$kind" = pidns ] || { echo "containment is '$kind'"; return 1; }
    [ "$(readlink /proc/$pid/ns/pid)" != "$(readlink /proc/self/ns/pid)" ] || { echo "server pid $pid shares our PID namespace"; return 1; }
}

t_broken_fails() {  # server = /bin/false (through a wrapper that counts its spawns)
    systemctl start --no-block xsupervise@98.service
    until_ok 120 sh -c '[ "$(systemctl show -P ActiveState xsupervise@98.service)" = failed ]' || { echo "still $(show xsupervise@98.service ActiveState)"; return 1; }
    local spawns; spawns=$(wc -l </run/broken-spawns)
    echo "NOTE xsupervise@98: spawns=$spawns (burst $BURST), exit status=$(show xsupervise@98.service ExecMainStatus)" >>"$OUT/results.tmp"
    [ "$spawns" -le $((BURST + 1)) ] || { echo "$spawns spawns, burst $BURST"; return 1; }
    [ "$(show xsupervise@98.service ExecMainStatus)" = 7 ] || { echo "exit $(show xsupervise@98.service ExecMainStatus)"; return 1; }
}

t_failed_status_text() {
    local text; text=$(show xsupervise@98.service StatusText)
    case $text in FAILED*) ;; *) echo "status text: '$text'"; return 1 ;; esac
}

# python3: does any journal entry of UNIT match all KEY=VALUE (VALUE ending in * is a prefix)?
journal_has() {
    local unit=$1; shift
    journalctl -o json -u "$unit" --no-pager | python3 -c '
import json, sys
want = [arg.split("=", 1) for arg in sys.argv[1:]]
def match(e):
    return all(str(e.get(k, "")).startswith(v[:-1]) if v.endswith("*") else e.get(k) == v for k, v in want)
entries = [json.loads(line) for line in sys.stdin if line.strip()]
if not any(match(e) for e in entries):
    sys.exit("no entry with " + " ".join(sys.argv[1:]) + "; messages: " + " | ".join(str(e.get("MESSAGE"))[:80] + " P" + str(e.get("PRIORITY")) for e in entries[-4:]))
' "$@"
}

t_journal_ready() { journal_has xsupervise.service SESSION=x DISPLAY=:50 PRIORITY=6 'MESSAGE=display :50 is ready*'; }
t_journal_failed() { journal_has xsupervise@98.service SESSION=display-98 PRIORITY=3 'MESSAGE=*'; }
t_journal_failed_once_prefixed() {
    ! journalctl -u xsupervise@98.service -o cat --no-pager | grep -q 'xsupervise: xsupervise:' || { echo "doubled prefix"; return 1; }
}

# Setup: a configured display, and a broken template instance with a quick budget.
mkdir -p /etc/xsupervise /etc/systemd/system/xsupervise@98.service.d
printf '[session.x]\ndisplay = ":50"\n' >/etc/xsupervise/config.toml
printf '#!/bin/sh\necho "$$" >>/run/broken-spawns\nexec /bin/false "$@"\n' >/usr/local/bin/broken-x
chmod 0755 /usr/local/bin/broken-x
cat >/etc/systemd/system/xsupervise@98.service.d/broken.conf <<CONF
[Service]
Environment=XSUPERVISE_SERVER=/usr/local/bin/broken-x XSUPERVISE_START_LIMIT_BURST=$BURST
Environment=XSUPERVISE_BACKOFF_INITIAL=0.5 XSUPERVISE_BACKOFF_MAX=1
RestartSec=0.5
CONF
: >/run/broken-spawns
systemctl daemon-reload

check "units verify cleanly on a minimal system" t_verify
check "socket unit alone listens (service inactive)" t_socket_alone
check "serve by hand names the socket unit, activates nothing" t_serve_refusal
check "first client request socket-activates the service" t_activation
check "Type=notify: start returns when the configured display answers" t_notify_ready
check "configured display [session.x] answers xdpyinfo" t_configured_display
check "systemctl reload (no /bin/kill) applies a new session" t_reload
check "template xsupervise@99: killed Xvfb comes back" t_template_restart
check "template xsupervise@99: its Xvfb runs in a PID namespace" t_containment
check "broken xsupervise@98 ends failed, exit 7, spawns <= burst + 1" t_broken_fails
check "failed xsupervise@98 status text says FAILED" t_failed_status_text
check "journal: ready line has SESSION, DISPLAY, PRIORITY=6" t_journal_ready
check "journal: FAILED line has SESSION at PRIORITY=3 (err)" t_journal_failed
check "journal: failure lines prefixed once" t_journal_failed_once_prefixed
journalctl -b --no-pager -u 'xsupervise*' >"$OUT/journal.txt" 2>&1
mv "$OUT/results.tmp" "$OUT/results"
