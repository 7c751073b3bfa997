# One image with every paystream binary; compose.yaml picks the binary per service.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/paystream /src/target/release/paystream-api \
     /src/target/release/acquirer-sim /src/target/release/scheduler /usr/local/bin/
COPY --from=build /src/target/release/*-worker /usr/local/bin/
ENV RUST_LOG=info
