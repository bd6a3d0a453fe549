# One supervised headless display per container: `xsupervise start :99` is PID 1.
#   docker build -t xsupervise .
#   docker run -d --name display xsupervise
# See docs/kubernetes.md (Docker section) for sharing the display with other containers.

# Build stage: the venv, with the systemd extra left out (no systemd in a container, and
# systemd-python would need a compiler): pip and its caches stay out of the runtime image.
FROM debian:12-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /opt/xsupervise \
    && /opt/xsupervise/bin/pip install --no-cache-dir /src

# Runtime: Xvfb and the venv only (the venv's python is the image's /usr/bin/python3).
FROM debian:12-slim
# Unpinned on purpose: a Debian stable point release only takes security and bug fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 xvfb xauth x11-utils \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/xsupervise /opt/xsupervise
ENV PATH=/opt/xsupervise/bin:$PATH
# PID 1: xsupervise handles SIGTERM itself (stops and reaps the X server, removes its files,
# exits 0) and reaps the orphans the kernel hands to PID 1. No shell form, so no sh between
# Docker's signal and us.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["xsupervise", "check", ":99", "--timeout", "3"]
CMD ["xsupervise", "start", ":99"]
