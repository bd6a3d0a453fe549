"""ffmpeg for recordings: where it is, and how it encodes what the recorder feeds it.

The recorder (_recorder.py) starts ffmpeg before it knows the display: loading ffmpeg's
two hundred libraries takes ~50 ms, paid while the X server initialises. So frames go in as
BMP images (``image2pipe``), each carrying its own size, not as raw video, whose size ffmpeg
must be told up front; and the encoded stream comes out on ffmpeg's stdout, which the
recorder copies to the file it opens once the display is ready (a failed start leaves no
file).

Frames are written only when the screen changed (and once a second when it did not): a
variable frame rate. ffmpeg stamps each frame with the wall clock as it reads it
(``-use_wallclock_as_timestamps``; ``-framerate 1000`` makes the time base 1 ms) and passes
the timestamps through. H.264 (libx264, ultrafast, zerolatency: no frame is held back).

The file must stay playable if everything is SIGKILLed mid-recording: a fragmented MP4 (an
empty ``moov`` first), one fragment per frame (``frag_every_frame``), flushed as written
(``flush_packets``). A plain MP4 writes its index only at the end; a fragmented one with
ffmpeg's default fragments (one per keyframe, 250 frames) holds nothing readable for seconds.
A fragment is complete once the next frame arrives, so a cut file lacks at most its last
second.
"""

from __future__ import annotations

import shutil

from . import _errors as errors

INSTALL = "install it (Debian: apt-get install ffmpeg)"
KEYFRAME_EVERY = 2  # seconds: where a player can start, or seek to


def find_ffmpeg() -> str:
    """ffmpeg's path, or EnvironmentProblem (exit 5) saying how to install it."""
    found = shutil.which("ffmpeg")
    if found is None:
        raise errors.EnvironmentProblem(
            f"recording needs ffmpeg, which was not found on PATH; {INSTALL}, or drop the "
            "record setting (--record, XSUPERVISE_RECORD)."
        )
    return found


def encoder_argv(ffmpeg: str = "ffmpeg") -> list[str]:
    """ffmpeg reading BMP frames on stdin, writing a fragmented MP4 (H.264) on stdout."""
    return [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        # Input: BMP images, timed as they arrive; no probing beyond the first one.
        "-f",
        "image2pipe",
        "-c:v",
        "bmp",
        "-framerate",
        "1000",
        "-fpsprobesize",
        "0",
        "-probesize",
        "32",
        "-analyzeduration",
        "0",
        "-use_wallclock_as_timestamps",
        "1",
        "-i",
        "pipe:0",
        # 4:2:0 needs even sizes: an odd width or height gets one black line of padding.
        "-vf",
        "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-pix_fmt",
        "yuv420p",
        "-fps_mode",
        "passthrough",
        "-force_key_frames",
        f"expr:gte(t,n_forced*{KEYFRAME_EVERY})",
        "-flush_packets",
        "1",
        "-movflags",
        "+frag_every_frame+empty_moov+default_base_moof",
        "-f",
        "mp4",
        "pipe:1",
    ]
