# The harness's one Python image. It serves every Python role of an environment:
#   Keystone (uWSGI), Barbican API nodes (uWSGI), barbican-worker, barbican-manage and
#   keystone-manage one-shots, the PyKMIP server, SoftHSM token set-up and the fault
#   proxy (python -m harness.proxy).
# Why one image: the local provider runs all of them from one venv with one pinned
# version set; a single image keeps that set identical across roles, is built once
# (~1 min instead of 4x) and stored once. The Barbican-only parts (softhsm2, opensc,
# the PKCS#11 fault shim) add ~10 MB.
#
# Python packages come only from the wheelhouse in the build context (the pinned
# versions of the harness venv, downloaded on the host): no index is used in the build.
# Classic builder only (docker-py has no BuildKit): no RUN --mount, no heredocs.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG BUILD_PACKAGES="gcc libc6-dev"
COPY apt-install.sh /usr/local/sbin/harness-apt-install
COPY debs/build/ /tmp/debs/
RUN sh /usr/local/sbin/harness-apt-install /tmp/debs $BUILD_PACKAGES
COPY wheelhouse/ /wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --no-index --find-links=/wheels --no-cache-dir -r /wheels/requirements.txt
# The harness itself, as a wheel: setup.py compiles harness/shim/p11shim.c (the PKCS#11
# fault shim) here, with this image's compiler and C library.
COPY src/ /src/
RUN /opt/venv/bin/pip wheel -q --no-index --find-links=/wheels --no-deps --no-build-isolation \
        --no-cache-dir -w /dist /src

FROM ${BASE_IMAGE}
ARG RUNTIME_PACKAGES="softhsm2 opensc"
COPY apt-install.sh /usr/local/sbin/harness-apt-install
COPY debs/runtime/ /tmp/debs/
RUN sh /usr/local/sbin/harness-apt-install /tmp/debs $RUNTIME_PACKAGES \
 && mkdir -p /var/lib/softhsm/tokens
# Dependencies first (changes only with the wheelhouse), the harness last (changes often).
COPY --from=build /opt/venv /opt/venv
COPY --from=build /dist/ /dist/
RUN /opt/venv/bin/pip install -q --no-index --no-deps --no-cache-dir /dist/*.whl \
 && rm -rf /dist \
 && ln -s "$(/opt/venv/bin/python -c 'from harness import shim; print(shim.library_path())')" \
        /usr/local/lib/libp11shim.so \
 && /opt/venv/bin/python -c "import barbican, keystone, kmip, harness.proxy, harness.wsgi" \
 && test -f /usr/lib/softhsm/libsofthsm2.so
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
