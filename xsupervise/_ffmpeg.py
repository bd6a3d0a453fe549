"""ffmpeg for recordings: where it is, and how it encodes what the recorder feeds it.

The recorder (_recorder.py) writes raw frames to ffmpeg's stdin only when the screen changed
(and once a second when it did not), so the stream has a variable frame rate: ffmpeg stamps
each frame with the wall clock as it reads it (``-use_wallclock_as_timestamps``, at 1 ms
resolution: ``-framerate 1000`` sets the input's time base), and passes the timestamps
through. H.264 (libx264, ultrafast, zerolatency: no frame is held back, so what was captured
is in the file at once).

A file must stay playable if everything is SIGKILLed mid-recording:
- MP4 (the default) is fragmented: an empty ``moov`` up front, then one fragment per frame
  (``frag_every_frame``), each flushed to the file as it is written (``flush_packets``). A
  plain MP4 writes its index only at the end; a fragmented one with ffmpeg's default
  fragments (one per keyframe, every 250 frames) holds nothing readable after seconds.
- Matroska (``.mkv``) closes a cluster at least every 500 ms (``cluster_time_limit``).
"""

from __future__ import annotations

import os
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


def container(path: str) -> str:
    """ffmpeg's muxer for ``path``: Matroska for .mkv, else fragmented MP4."""
    return "matroska" if path.lower().endswith(".mkv") else "mp4"


def encoder_argv(ffmpeg: str, width: int, height: int, pixel_format: str, path: str) -> list[str]:
    """ffmpeg reading raw ``pixel_format`` frames of ``width``x``height`` on stdin, writing
    H.264 to ``path``."""
    # 4:2:0 halves the chroma planes, so it needs even sizes; an odd screen keeps its size
    # with 4:4:4 (fewer players play it).
    chroma = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    argv = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-f",
        "rawvideo",
        "-pix_fmt",
        pixel_format,
        "-video_size",
        f"{width}x{height}",
        "-framerate",
        "1000",
        "-use_wallclock_as_timestamps",
        "1",
        "-i",
        "pipe:0",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-pix_fmt",
        chroma,
        "-fps_mode",
        "passthrough",
        "-force_key_frames",
        f"expr:gte(t,n_forced*{KEYFRAME_EVERY})",
        "-flush_packets",
        "1",
    ]
    if container(path) == "matroska":
        argv += ["-cluster_time_limit", "500", "-f", "matroska"]
    else:
        argv += ["-movflags", "+frag_every_frame+empty_moov+default_base_moof", "-f", "mp4"]
    return [*argv, "-y", os.fspath(path)]
