# sightline-server-gpu: the server with ONNX Runtime's CUDA execution provider; the CUDA and
# cuDNN libraries come from NVIDIA's PyPI wheels, the driver from the node (the NVIDIA
# container toolkit mounts it). linux/amd64 only (onnxruntime-gpu has no arm64 wheels).
#   docker build -f manifests/docker/sightline-server-gpu.Dockerfile \
#     --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/sightline/sightline-server-gpu:0.1.0 .
# The same files, environment and labels as `make images` (images/build.py); e2e/tests/images.rs
# compares the two.

FROM rust:1.92-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sightline-server \
 && strip --strip-debug -o /sightline-server target/release/sightline-server

# Debian's libc, libstdc++ and CA bundle; onnxruntime-gpu and the NVIDIA wheels it needs:
# the versions and SHA-256 pinned in images/debs.lock and images/wheels.lock.
FROM debian:bookworm-slim AS rootfs
RUN apt-get update && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY images/ /src/images/
RUN python3 /src/images/build.py --cache /cache rootfs --image sightline-server-gpu --out /rootfs

FROM scratch
COPY --from=rootfs /rootfs/ /
COPY --from=build /sightline-server /usr/local/bin/sightline-server
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    HOME=/home/nonroot \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    SIGHTLINE_ORT_LIB=/opt/onnxruntime/lib/libonnxruntime.so \
    LD_LIBRARY_PATH=/opt/onnxruntime/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="sightline-server-gpu" \
      org.opencontainers.image.description="Sightline image recognition server with the ONNX Runtime CUDA execution provider" \
      org.opencontainers.image.source="https://github.com/sightline/sightline" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0 AND LGPL-2.1-or-later AND GPL-3.0-or-later WITH GCC-exception-3.1 AND MPL-2.0 AND MIT AND LicenseRef-NVIDIA-CUDA-EULA AND LicenseRef-NVIDIA-cuDNN-SLA" \
      org.opencontainers.image.vendor="Sightline" \
      org.opencontainers.image.created="${CREATED}"
USER 65532:65532
WORKDIR /
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sightline-server"]
CMD ["--help"]
