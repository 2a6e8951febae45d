# The deployer's own image. `make image` (scripts/image) assembles the build context (the deployer's wheels and
# the pinned helm) and builds this with buildah from localhost/deployer/bookworm:12, a Debian base that
# scripts/image-base makes from Debian's packages: no registry can be pulled from on our machines. Anywhere
# else, a Debian bookworm base with python3, git, buildah, uidmap and ca-certificates does the same.
ARG BASE=localhost/deployer/bookworm:12

FROM ${BASE} AS build
COPY wheels /wheels
# pip runs from its own wheel (Debian's python3 has no ensurepip) and downloads nothing. Then out goes what the
# deployer never imports: the async client, and schemas of Kubernetes versions it does not validate with.
RUN set -- /wheels/pip-*.whl \
 && python3 -m venv --without-pip /opt/deployer \
 && /opt/deployer/bin/python "$1/pip" install --quiet --no-index --no-compile --find-links /wheels deployer \
 && cd /opt/deployer/lib/python3.11/site-packages \
 && rm -rf kubernetes/aio kubernetes/test kubernetes/client/api/__pycache__ \
 && find kubernetes_validate/kubernetes-json-schema -mindepth 1 -maxdepth 1 ! -name 'v1.35.0-local*' -exec rm -rf {} +

FROM ${BASE}
COPY --from=build /opt/deployer /opt/deployer
COPY helm /usr/local/bin/helm
# a non-root user with subordinate ids, so that buildah builds rootless (chroot isolation, vfs storage)
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin deployer \
 && echo "deployer:100000:65536" > /etc/subuid && echo "deployer:100000:65536" > /etc/subgid \
 && mkdir -p /var/lib/deployer /etc/deployer && chown deployer:deployer /var/lib/deployer
ENV PATH=/opt/deployer/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    BUILDAH_ISOLATION=chroot STORAGE_DRIVER=vfs PYTHONDONTWRITEBYTECODE=1
USER 1000
WORKDIR /var/lib/deployer
EXPOSE 2222 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["deployer"]
CMD ["serve", "--config", "/etc/deployer/config/server.yaml"]
