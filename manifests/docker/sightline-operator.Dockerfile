# sightline-operator.
#   docker build -f manifests/docker/sightline-operator.Dockerfile -t sightline-operator .

FROM rust:1.92-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sightline-operator

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sightline-operator /usr/local/bin/sightline-operator
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/sightline-operator"]
CMD ["run"]
