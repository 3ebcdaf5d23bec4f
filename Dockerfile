# mqlink as an Airbyte destination (a drop-in for destination-mqtt):
#   docker build -t mqlink/destination-mqtt .
#   docker run --rm mqlink/destination-mqtt spec
#   docker run --rm -v $PWD:/data mqlink/destination-mqtt check --config /data/config.json
#   docker run --rm -i -v $PWD:/data mqlink/destination-mqtt write --config /data/config.json --catalog /data/catalog.json
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p mqlink-cli && strip target/release/mqlink

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mqlink /usr/local/bin/mqlink
# Airbyte calls the image with `spec`, `check --config …`, `write --config … --catalog …`.
ENV AIRBYTE_ENTRYPOINT="/usr/local/bin/mqlink airbyte"
ENTRYPOINT ["/usr/local/bin/mqlink", "airbyte"]
LABEL io.airbyte.name=mqlink/destination-mqtt
LABEL io.airbyte.version=0.1.0
