# syntax=docker/dockerfile:1
#
# pixelrelay container image: one static binary on distroless, running as a
# non-root user, with its database and audit log on the /data volume.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t pixelrelay .
#   docker run -d --name pixelrelay -p 2525:2525 -p 127.0.0.1:8025:8025 \
#     -v pixelrelay-data:/data -e PIXELRELAY_UPSTREAM=starttls://user:pass@smtp.example.com:587 pixelrelay
#
# docs/operations.md has the details. CI has no Docker engine, so CI never
# builds this image; cmd/pixelrelay/dockerfile_test.go instead builds the
# binary with exactly the go build line below and runs it as this image
# would: as USER, with these ENV defaults, checked by the HEALTHCHECK command.

ARG GO_VERSION=1.26

# The build stage runs on the builder's own platform and cross-compiles, so
# a multi-platform build (--platform linux/amd64,linux/arm64) needs no
# emulation: the binary is pure Go.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first: a source change then reuses the downloaded modules layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Set by BuildKit for each target platform; empty means the builder's own.
ARG TARGETOS
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/pixelrelay ./cmd/pixelrelay
# The volume's mount point, created here because the runtime image has no
# shell. A new named volume takes the ownership of the image's directory,
# so it starts out writable by the runtime user.
RUN mkdir -p /out/data

# distroless/static: CA certificates (for the upstream's TLS), tzdata and a
# passwd entry for the nonroot user (65532), and nothing else: no shell, no
# package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pixelrelay /usr/local/bin/pixelrelay
COPY --from=build --chown=65532:65532 /out/data /data

# Container defaults. Inside the container the listeners bind all
# interfaces (publishing a port is the operator's decision). Relaying
# without AUTH is allowed only from loopback and private networks: the
# Docker bridge and Compose networks (172.16.0.0/12, 192.168.0.0/16),
# Kubernetes pod networks (10.0.0.0/8) and IPv6 ULA. Narrow it to the
# senders' network, e.g. -e PIXELRELAY_ALLOW_NET=172.20.0.0/16, and give
# remote senders AUTH (--users) instead of widening it.
ENV PIXELRELAY_LISTEN=0.0.0.0:2525 \
    PIXELRELAY_HTTP=0.0.0.0:8025 \
    PIXELRELAY_DB=/data/pixelrelay.db \
    PIXELRELAY_AUDIT_LOG=/data/audit.jsonl \
    PIXELRELAY_OUTBOX=/data/outbox \
    PIXELRELAY_ALLOW_NET=127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7
# Keeps Go's scheduler monitor from polling every 20 µs after each idle
# spell: a fifth of the relay's CPU beside Postfix. deploy/systemd/
# pixelrelay.service explains it; the two must agree (a test checks).
ENV GODEBUG=schedtrace=2147483647

WORKDIR /data
VOLUME ["/data"]
# 2525: SMTP (plain, STARTTLS when a certificate is set). 8025: admin API,
# /metrics, /healthz and /readyz; publish it on loopback or a private
# network only.
EXPOSE 2525 8025
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

# distroless has no curl: the binary checks itself. It reads PIXELRELAY_HTTP
# to find the admin listener.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/pixelrelay", "healthcheck"]

# SIGTERM drains sessions in flight (drain_timeout, 30s by default): give
# `docker stop` more than that, e.g. docker stop -t 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pixelrelay"]
CMD ["serve"]
