# syntax=docker/dockerfile:1

# Build: a static binary, so the runtime image needs no libc.
FROM golang:1.26 AS build
WORKDIR /src
# Modules first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/movies ./cmd/movies

# Run: distroless static has CA certificates (for https upstreams) and tzdata,
# and no shell or package manager; nonroot is uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/movies /movies
EXPOSE 8000
USER nonroot:nonroot
# No shell or curl in the image: the binary probes its own /healthz. It reads
# -addr from MOVIES_ADDR like the server does, so both agree on the port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["/movies", "-healthcheck"]
ENTRYPOINT ["/movies"]
