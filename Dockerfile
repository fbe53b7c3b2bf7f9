# The tenancy-fixer image: `docker build -t tenancy-fixer:0.1.0 .` (see README, "Install in a cluster").
# Builder and runtime are both Debian 12, so the binary finds the glibc it was linked against.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tenancy-fixer

FROM debian:bookworm-slim
COPY --from=build /src/target/release/tenancy-fixer /usr/local/bin/tenancy-fixer
# manifests::MALLOC_TUNABLES (a test keeps the two equal).
ENV GLIBC_TUNABLES=glibc.malloc.tcache_count=64
# Numeric, so that the Deployment's runAsNonRoot can check it (runAsUser 65532 there too).
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/tenancy-fixer"]
CMD ["--help"]
