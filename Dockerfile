# syntax=docker/dockerfile:1
#
# BatchSender container image: a static binary on a small, non-root image.
#
#   docker build -t batchsender .
#   docker run -p 127.0.0.1:8080:8080 -v batchsender-data:/data \
#     -e BATCHSENDER_BOOTSTRAP_KEY=... batchsender
#
# The default command is `serve` on SQLite in the /data volume; set
# BATCHSENDER_DATABASE_URL to use PostgreSQL (see docker-compose.yml and
# docs/self-hosting.md).

# ---- build ----------------------------------------------------------------
FROM golang:1.26 AS build
WORKDIR /src

# Dependencies first, so a code change does not download them again.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
ARG VERSION=dev
# CGO_ENABLED=0: the SQLite driver is pure Go, so the binary is fully static
# and runs on any base image.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/batchsender ./cmd/batchsender

# ---- run ------------------------------------------------------------------
# Alpine rather than distroless/static: the HEALTHCHECK needs an HTTP client
# (busybox wget) until the binary has a health-check command of its own.
FROM alpine:3.22
RUN apk add --no-cache ca-certificates \
 && addgroup -S -g 10001 batchsender \
 && adduser -S -D -H -u 10001 -G batchsender -s /sbin/nologin batchsender \
 && mkdir -p /data \
 && chown batchsender:batchsender /data \
 && chmod 0700 /data
COPY --from=build /out/batchsender /usr/local/bin/batchsender

USER 10001:10001
WORKDIR /data
ENV BATCHSENDER_ADDR=0.0.0.0:8080 \
    BATCHSENDER_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080

# /healthz answers as soon as the HTTP server runs. A `worker` serves no API:
# give it BATCHSENDER_HEALTH_ADDR=0.0.0.0:8080 (as docker-compose.yml does)
# so that this check has something to ask.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD wget -q -O /dev/null http://127.0.0.1:8080/healthz || exit 1

ENTRYPOINT ["batchsender"]
CMD ["serve"]
