# A Barbican build (harness.builds: a release, a wheel, an sdist, a git commit) on top of the
# harness's python image: the build's own venv at /opt/barbican, first on PATH, so uwsgi,
# barbican-manage and barbican-worker are the build's; everything else (SoftHSM, the PKCS#11
# shim, the harness's WSGI module on PYTHONPATH, Keystone's venv) is the python image's.
# Built by harness/builds/image.py from a wheelhouse made on the host (the build venv's
# pins and the build's own wheel): no index is used, the build runs without network.
ARG BASE_IMAGE

FROM ${BASE_IMAGE} AS build
COPY wheelhouse/ /wheels/
RUN python3 -m venv /opt/barbican \
 && /opt/barbican/bin/pip install -q --no-index --find-links=/wheels --no-cache-dir -r /wheels/requirements.txt

FROM ${BASE_IMAGE}
LABEL barbican-harness.image=barbican
COPY --from=build /opt/barbican /opt/barbican
ENV PATH=/opt/barbican/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN python3 -c "import barbican.cmd.barbican_manage, pyuwsgi, harness.wsgi" && command -v barbican-worker
