"""The xorg-dummy profile: Xorg with the dummy video driver, configured by us, per session.

We write ``xorg.conf`` into the session's private directory (the dummy driver, one mode of
``--screen``'s size, no input devices) and run the Xorg binary itself
(``/usr/lib/xorg/Xorg``), not the ``Xorg`` wrapper: the wrapper's console-user check
("Only console users are allowed to run the X server") would refuse an unprivileged user,
and unprivileged Xorg accepts ``-config`` and ``-logfile`` at absolute paths only when it is
not setuid. Its log goes to the session's directory too. ``-novtswitch -sharevts -keeptty``:
it never switches VT; unprivileged it opens none.
"""

from __future__ import annotations

import math
import os

from ..host import errors
from ..host.paths import write_private_file

_DEPTHS = (8, 15, 16, 24)
_MAX_CLOCK_MHZ = 290  # under the dummy driver's default 300 MHz limit
CONFIG_NAME, LOG_NAME = "xorg.conf", "Xorg.log"


def modeline(width: int, height: int) -> str:
    """A reduced-blanking modeline for width x height, at 60 Hz or less within the clock."""
    htotal, vtotal = width + 160, height + max(23, height // 30)
    refresh = min(60.0, _MAX_CLOCK_MHZ * 1e6 / (htotal * vtotal))
    clock = htotal * vtotal * refresh / 1e6
    horizontal = f"{width} {width + 48} {width + 80} {htotal}"
    vertical = f"{height} {height + 3} {height + 9} {vtotal}"
    return f'"{width}x{height}" {clock:.2f} {horizontal} {vertical} +HSync +VSync'


def config_text(width: int, height: int, depth: int) -> str:
    video_ram = math.ceil(width * height * 4 / 1024) + 4096  # kB; 32 bits a pixel at most
    return f"""\
# Written by xsupervise for the xorg-dummy profile; removed with the session.
Section "ServerFlags"
    Option "AutoAddDevices" "false"
    Option "AutoEnableDevices" "false"
    Option "AutoAddGPU" "false"
    Option "DontVTSwitch" "true"
    Option "AllowMouseOpenFail" "true"
EndSection
Section "Device"
    Identifier "dummy"
    Driver "dummy"
    VideoRam {video_ram}
EndSection
Section "Monitor"
    Identifier "monitor"
    HorizSync 1.0-2000.0
    VertRefresh 1.0-200.0
    Option "ReducedBlanking"
    Modeline {modeline(width, height)}
EndSection
Section "Screen"
    Identifier "screen"
    Device "dummy"
    Monitor "monitor"
    DefaultDepth {depth}
    SubSection "Display"
        Depth {depth}
        Modes "{width}x{height}"
        Virtual {width} {height}
    EndSubSection
EndSection
"""


def xorg_args(width: int, height: int, depth: int, directory: str) -> list[str]:
    if depth not in _DEPTHS:
        raise errors.UsageError(
            f"the xorg-dummy profile cannot honour depth {depth}: the dummy driver takes "
            f"{', '.join(map(str, _DEPTHS))}."
        )
    config = os.path.join(directory, CONFIG_NAME)
    write_private_file(config, config_text(width, height, depth).encode())
    log_file = os.path.join(directory, LOG_NAME)
    return ["-config", config, "-logfile", log_file, "-novtswitch", "-sharevts", "-keeptty"]
