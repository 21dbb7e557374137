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

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/lsmux /usr/local/bin/lsmux
USER nonroot:nonroot
ENV LSMUX_LISTEN=:8080 LSMUX_LOG_FORMAT=json
EXPOSE 8080
# No shell in the image: the binary checks its own /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/lsmux", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/lsmux"]
CMD ["serve"]
