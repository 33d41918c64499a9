# kube-netpol node agent image, for linux/amd64 and linux/arm64:
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/kube-netpol:<tag> .
# Build stage: runs on the build machine's own platform and cross-compiles with `deno compile
# --target` (no emulation). scripts/compile.ts computes the flags from src/cli/permissions.ts for
# the target architecture (library paths from ffi/library.ts); a unit test keeps this file on it.
# Runtime stage: per target platform, the C library we bind and the rule tools, nothing else.
FROM --platform=$BUILDPLATFORM denoland/deno:debian-2.9.6 AS build
ARG TARGETARCH
WORKDIR /src
COPY deno.json deno.lock main.ts ./
COPY src ./src
COPY ffi ./ffi
COPY scripts/compile.ts ./scripts/
RUN deno cache --frozen main.ts src/verdict/verdict_worker.ts scripts/compile.ts
RUN deno run --frozen --allow-read --allow-run scripts/compile.ts \
      --target "$TARGETARCH" --output /kube-netpol

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnetfilter-queue1 iptables ipset nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /kube-netpol /usr/local/bin/kube-netpol
ENTRYPOINT ["/usr/local/bin/kube-netpol"]
CMD ["run"]
