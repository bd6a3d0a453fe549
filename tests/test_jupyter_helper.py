"""xsupervise.jupyter: the dict jupyter-server-proxy gets, rendered as it renders it, and run."""

from __future__ import annotations

import getpass
import os
import subprocess

from conftest import requires_xvfb
from xsupervise import jupyter
from xsupervise.launch.settings import load_settings


def render(spec: dict, port: int = 8765) -> list[str]:
    """What jupyter-server-proxy does with 'command': str.format each argument."""
    return [arg.format(port=port, unix_socket="", base_url="/user/x/") for arg in spec["command"]]


def render_environment(spec: dict, port: int = 8765) -> dict[str, str]:
    return {
        key.format(port=port, unix_socket="", base_url="/user/x/"): value.format(
            port=port, unix_socket="", base_url="/user/x/"
        )
        for key, value in spec["environment"].items()
    }


def test_the_dict_wraps_the_command_and_leaves_proxy_fields_to_the_proxy():
    spec = jupyter.server_process(
        "desktop",
        ["app", "--port", "{port}", "--on", "{display}", "--literal={{braces}}", "{base_url}desk"],
        title="Desktop",
        screen="1024x768x24",
        absolute_url=False,
        environment={"PS1": "{user}$ ", "APP_PORT": "{port}"},
    )
    command = render(spec)
    cut = command.index("--")
    assert command[cut - 11 : cut] == [
        "start",
        ":auto",
        "--name",
        f"jupyter-{getpass.getuser()}-desktop",
        "--substitute",
        "--relaunched",
        "--exit-with-parent",
        "--parent-pid",
        str(os.getpid()),  # the Jupyter server
        "--screen",
        "1024x768x24",
    ]
    assert render_environment(spec) == {"PS1": "{user}$ ", "APP_PORT": "8765"}
    assert command[cut + 1 :] == [
        "app",
        "--port",
        "8765",
        "--on",
        "{display}",
        "--literal={{braces}}",
        "/user/x/desk",
    ]
    assert spec["launcher_entry"] == {"enabled": True, "title": "Desktop"}
    assert spec["absolute_url"] is False
    settings = load_settings()
    assert spec["timeout"] == settings.backoff_max + settings.displayfd_timeout + 30
    assert jupyter.session_name("desktop", "alice") == "jupyter-alice-desktop"


@requires_xvfb
def test_the_rendered_command_runs_on_a_verified_display():
    spec = jupyter.server_process(
        "echo",
        [
            "sh",
            "-c",
            "echo {display} {display_number} {port} "
            "{xauthority} {{port}} {{x}} '{port:05d}' 'a}b{c'; "
            "xdpyinfo >/dev/null && echo answered",
        ],
    )
    result = subprocess.run(render(spec), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    display = lines[0].removeprefix("DISPLAY=")
    xauthority = lines[1].removeprefix("XAUTHORITY=")
    # What the app gets: both sets of fields filled, '{{ }}' literal, lone braces as written.
    assert lines[2] == f"{display} {display[1:]} 8765 {xauthority} {{port}} {{x}} 08765 a}}b{{c"
    assert lines[3] == "answered"
