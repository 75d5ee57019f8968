# syntax=docker/dockerfile:1
#
# streamproxy container image.
#
#   docker build -t streamproxy .
#   docker run --rm -p 8080:8080 -p 9901:9901 streamproxy
#
# The config lives at /etc/streamproxy/proxy.yaml (PROXY_CONFIG points there): mount your own file
# over it, or set PROXY_CONFIG to another path. See docs/deploy.md.

# ---------------------------------------------------------------------------------------------
# builder: install the project and its runtime dependencies (no dev extras) into a virtualenv.
# ---------------------------------------------------------------------------------------------
FROM python:3.12-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so this layer is cached until they change.
# EXTRAS: optional dependency groups to include (comma-separated); `otel` is what `tracing:` needs.
# `--build-arg EXTRAS=` builds the smallest image, without tracing.
ARG EXTRAS=otel
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = [e for e in os.environ.get('EXTRAS', '').split(',') if e]; print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the project itself (.dockerignore keeps tests, caches and VCS data out of the context).
COPY . .
# pip and setuptools are build tools, not runtime dependencies: they leave the venv (a third of its
# size). Derived images can still add plugins with the base image's pip:
#   pip --python /opt/venv/bin/python install my-plugin
RUN pip install --no-deps . \
 && python -c "import proxy, plugins" \
 && python -m pip uninstall --yes --quiet pip setuptools \
 && python -c "import aiohttp, proxy.cli"

# ---------------------------------------------------------------------------------------------
# runtime: the same base, the virtualenv, the default config, and a non-root user.
# ---------------------------------------------------------------------------------------------
FROM python:3.12-slim

# A fixed, numeric non-root uid/gid (Kubernetes' runAsNonRoot can only verify a numeric USER).
# Written directly, as the shadow tools are not in every slim base.
RUN echo 'streamproxy:x:10001:10001:streamproxy:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'streamproxy:x:10001:' >> /etc/group

COPY --from=builder /opt/venv /opt/venv
COPY proxy.yaml /etc/streamproxy/proxy.yaml

# PROXY_HOST, PROXY_ADMIN_HOST: the bundled proxy.yaml binds its listeners to
# ${PROXY_HOST:-127.0.0.1} and ${PROXY_ADMIN_HOST:-127.0.0.1}; in a container both must listen on
# all interfaces, or `docker run -p` and the kubelet's probes could not reach them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROXY_CONFIG=/etc/streamproxy/proxy.yaml \
    PROXY_HOST=0.0.0.0 \
    PROXY_ADMIN_HOST=0.0.0.0

WORKDIR /tmp
USER 10001:10001

# 8080: the proxy (server.port); 9901: admin (health, readiness, metrics).
EXPOSE 8080 9901

# Shell form on purpose: no curl or wget in the slim image, so python's urllib does the probe;
# any connection error or non-2xx status exits non-zero.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"

# Exec form: python is PID 1 and receives SIGTERM itself, drains in-flight streams within
# server.shutdown_grace, and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "proxy"]
CMD ["run"]
