# sightline-operator.
#   docker build -f manifests/docker/sightline-operator.Dockerfile \
#     --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/sightline/sightline-operator:0.1.0 .
# The same files, environment and labels as `make images` (images/build.py), which needs no
# base image; e2e/tests/images.rs compares the two.

FROM rust:1.92-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sightline-operator \
 && strip --strip-debug -o /sightline-operator target/release/sightline-operator

# Debian's libc and CA bundle, pinned in images/debs.lock (the same base layer as the server).
FROM debian:bookworm-slim AS rootfs
RUN apt-get update && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY images/ /src/images/
RUN python3 /src/images/build.py --cache /cache rootfs --image sightline-operator --out /rootfs

FROM scratch
COPY --from=rootfs /rootfs/ /
COPY --from=build /sightline-operator /usr/local/bin/sightline-operator
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    HOME=/home/nonroot \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="sightline-operator" \
      org.opencontainers.image.description="Sightline Kubernetes operator (ImageModel, RecognitionPipeline)" \
      org.opencontainers.image.source="https://github.com/sightline/sightline" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0 AND LGPL-2.1-or-later AND GPL-3.0-or-later WITH GCC-exception-3.1 AND MPL-2.0" \
      org.opencontainers.image.vendor="Sightline" \
      org.opencontainers.image.created="${CREATED}"
USER 65532:65532
WORKDIR /
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/sightline-operator"]
CMD ["run"]
