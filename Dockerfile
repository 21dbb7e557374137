# syntax=docker/dockerfile:1
# Multi-stage: a static binary built by .ci/build (the same script CI runs),
# on a minimal non-root runtime image. Configure with LSMUX_* environment
# variables only.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN OUT=/out/lsmux VERSION=${VERSION} sh .ci/build
# The data dir, owned by the runtime image's nonroot user (65532): the
# runtime image has no shell to make it.
RUN mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/lsmux /usr/local/bin/lsmux
COPY --from=build --chown=65532:65532 /out/data /data
# By number, not name: Kubernetes checks runAsNonRoot only against a uid.
USER 65532:65532
# Durable history on the volume: a restart numbers on, resumes reach back
# beyond the ring, and the reconnect delay is kept across restarts.
ENV LSMUX_LISTEN=:8080 LSMUX_LOG_FORMAT=json LSMUX_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
# No shell in the image: the binary checks its own /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD ["/usr/local/bin/lsmux", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/lsmux"]
CMD ["serve"]
