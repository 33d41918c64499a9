# kube-netpol node agent image.
# Build stage: deno compile bakes the agent's exact permissions (src/cli/permissions.ts; a unit
# test keeps this list equal to it) into one self-contained binary.
# Runtime stage: the C library we bind and the rule tools the backends run, nothing else.
FROM denoland/deno:debian-2.9.6 AS build
WORKDIR /src
COPY deno.json deno.lock main.ts ./
COPY src ./src
COPY ffi ./ffi
RUN deno cache --frozen main.ts src/verdict/verdict_worker.ts
# The verdict loop runs in a Worker, which compile only bundles when --include names it.
RUN deno compile --frozen --output /kube-netpol \
      --include src/verdict/verdict_worker.ts \
      --allow-ffi=/usr/lib/x86_64-linux-gnu/libnetfilter_queue.so.1,/usr/lib/x86_64-linux-gnu/libc.so.6 \
      --allow-net \
      --allow-read \
      --allow-env \
      --allow-run=iptables-nft,iptables-nft-save,iptables-nft-restore,ip6tables-nft,ip6tables-nft-save,ip6tables-nft-restore,iptables-legacy,iptables-legacy-save,iptables-legacy-restore,ip6tables-legacy,ip6tables-legacy-save,ip6tables-legacy-restore,ipset,nft \
      --allow-sys=hostname \
      main.ts

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnetfilter-queue1 iptables ipset nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /kube-netpol /usr/local/bin/kube-netpol
ENTRYPOINT ["/usr/local/bin/kube-netpol"]
CMD ["run"]
