# postern: a small, non-root image holding one static binary.
#
#   docker build -t postern .
#   docker run -p 8080:8080 -v postern-data:/data postern
#
# Build stage: a static binary (no cgo), version stamped from the build arg.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/postern/postern/internal/version.version=${VERSION}" \
      -o /out/postern ./cmd/postern \
 && mkdir -p /out/data \
 && echo 'postern:x:10001:10001:postern:/data:/sbin/nologin' > /out/passwd \
 && echo 'postern:x:10001:' > /out/group

# Run stage: nothing but the binary, CA certificates (for rediss:// and
# TLS backends), and an unprivileged user owning the data directory.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build --chown=10001:10001 /out/data /data
COPY --from=build /out/postern /postern
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8080
ENV POSTERN_LISTEN=:8080 POSTERN_STORE=file:/data
HEALTHCHECK NONE
ENTRYPOINT ["/postern"]
CMD ["serve"]
