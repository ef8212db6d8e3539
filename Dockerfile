# syntax=docker/dockerfile:1
# The p12-operator image: one static binary (x86_64 musl) on distroless
# "static", running as the unprivileged user 65532. Build it with
#   docker build -t ghcr.io/p12-operator/p12-operator:0.1.0 .
# (docs/install.md shows how to load it into kind or k3d).

# --- build ------------------------------------------------------------------
FROM docker.io/library/rust:1-bookworm AS build
# musl-tools: musl-gcc, the C compiler aws-lc-sys (rustls' crypto) needs for the
# musl target. aws-lc-sys ships pre-generated bindings for
# x86_64-unknown-linux-musl and builds with cc, so neither cmake, clang nor Go
# is needed. (musl-gcc hides the kernel headers, so aws-lc takes its randomness
# from getentropy(), which needs Linux 3.17 or newer: any Kubernetes node.)
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
ENV CC_x86_64_unknown_linux_musl=musl-gcc
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the build folder between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p p12-operator --bin p12-operator \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/p12-operator /out/p12-operator

# --- run --------------------------------------------------------------------
# distroless/static: CA certificates, /etc/passwd with "nonroot" (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="p12-operator" \
      org.opencontainers.image.description="Issues PKCS#12 keystores from CertificateRequests and verifies what workloads serve" \
      org.opencontainers.image.source="https://github.com/p12-operator/p12-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/p12-operator /p12-operator
USER 65532:65532
ENTRYPOINT ["/p12-operator"]
CMD ["run"]
