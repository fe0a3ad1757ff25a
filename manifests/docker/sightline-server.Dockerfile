# sightline-server: all roles, and the model-fetch init container.
#   docker build -f manifests/docker/sightline-server.Dockerfile -t sightline-server .
# GPU image (CUDA execution provider; the NVIDIA libraries come from PyPI wheels):
#   docker build -f manifests/docker/sightline-server.Dockerfile \
#     --build-arg ORT_PACKAGE='onnxruntime-gpu[cuda,cudnn]' -t sightline-server:gpu .

FROM rust:1.92-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sightline-server

# ONNX Runtime's shared library from its PyPI wheel (ort loads it at run time).
FROM python:3.12-slim-bookworm AS onnxruntime
ARG ORT_PACKAGE=onnxruntime
ARG ORT_VERSION=1.31.1
RUN python -m venv /ort && /ort/bin/pip install --no-cache-dir "${ORT_PACKAGE}==${ORT_VERSION}" \
 && mkdir -p /opt/onnxruntime/lib \
 && capi=$(/ort/bin/python -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))') \
 && cp "$(ls $capi/libonnxruntime.so* | head -n1)" /opt/onnxruntime/lib/libonnxruntime.so \
 && cp $capi/libonnxruntime_providers_*.so /opt/onnxruntime/lib/ 2>/dev/null || true \
 && find /ort/lib -path '*/nvidia/*/lib/*.so*' -exec cp {} /opt/onnxruntime/lib/ \;

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=onnxruntime /opt/onnxruntime /opt/onnxruntime
COPY --from=build /src/target/release/sightline-server /usr/local/bin/sightline-server
ENV SIGHTLINE_ORT_LIB=/opt/onnxruntime/lib/libonnxruntime.so \
    LD_LIBRARY_PATH=/opt/onnxruntime/lib
# The uid the operator's pods run as (runAsNonRoot, readOnlyRootFilesystem).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sightline-server"]
# The operator passes each role and its flags; alone, the image explains itself.
CMD ["--help"]
