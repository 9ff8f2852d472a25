# The DataExec server image, for the compose deployment (docker-compose.yml, docs/deploy.md):
# the server in a venv, driving kernels as sibling containers of the kernel image on the
# host's Docker engine.
#
# Built with no registry and no network (`docker build --network none`, which compose's
# `build.network: none` repeats): the base is dataexec-server-base:bookworm (debootstrap),
# the dependencies come from .cache/server-wheels/, both made on the host by
# `dataexec build-image --server` (server/ops/server_image.py). The server's own code is
# copied from this repository, so `docker-compose up --build` picks up its changes.
ARG BASE=dataexec-server-base:bookworm

# Stage 1, the dependencies: rebuilt only when the wheelhouse (the pins) changes. The wheels
# stay in this stage; so do the packages' own test suites, never imported at run time.
FROM ${BASE} AS deps
COPY .cache/server-wheels /wheels
COPY constraints.txt /build/
RUN python3 -m venv /opt/dataexec \
 && /opt/dataexec/bin/python -m pip install --no-index --find-links /wheels \
        --no-cache-dir --disable-pip-version-check --no-warn-script-location \
        -r /wheels/requirements.txt -c /build/constraints.txt \
 && find /opt/dataexec/lib/python3.11/site-packages -depth -type d -name tests \
        -exec rm -rf {} +

# Stage 2, the server's own package as a wheel, from this checkout.
FROM deps AS package
COPY setup.cfg pyproject.toml README.md /build/src/
COPY server /build/src/server
COPY kernel_image/dataexec_kernel /build/src/kernel_image/dataexec_kernel
COPY kernel_image/dataexec_client /build/src/kernel_image/dataexec_client
RUN /opt/dataexec/bin/python -m pip wheel --no-deps --no-build-isolation --no-index \
        --disable-pip-version-check --wheel-dir /dist /build/src

# The image: the dependencies' layer is shared by every build with the same pins, so a
# changed checkout costs one small layer.
FROM ${BASE}
COPY --from=deps /opt/dataexec /opt/dataexec
COPY --from=package /dist /dist
RUN /opt/dataexec/bin/python -m pip install --no-deps --no-index --no-cache-dir \
        --disable-pip-version-check --no-warn-script-location /dist/*.whl \
 && rm -rf /dist \
 && /opt/dataexec/bin/python -m compileall -q /opt/dataexec/lib/python3.11/site-packages/server
# State (token, cache, store, the embedded PostgreSQL) and per-kernel sockets: compose binds
# both at the same path as on the host, since the engine resolves kernels' bind mounts there.
ENV PATH=/opt/dataexec/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATAEXEC_STATE_DIR=/var/lib/dataexec \
    DATAEXEC_RUNTIME_DIR=/run/dataexec \
    DATAEXEC_SANDBOX=docker
LABEL org.opencontainers.image.title="dataexec-server"
EXPOSE 8001
ENTRYPOINT ["/usr/bin/tini", "--", "dataexec"]
CMD ["serve"]
