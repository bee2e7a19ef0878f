#!/usr/bin/env bash
# Makes a throw-away CA and certificates for trying TLS locally (never for production): a
# certificate for the terminal and HTTP listeners, and one each for the router and the comets of
# the cluster link's mutual TLS, all for localhost and 127.0.0.1, in deploy/tls/certs (ignored
# by git). Needs openssl. Run again to start over.
set -euo pipefail
cd "$(dirname "$0")"
out=certs
rm -rf "$out"
mkdir -p "$out"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=galopush throw-away CA" -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null

leaf() {
    local name=$1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$name" -keyout "$out/$name.key" -out "$out/$name.csr" 2>/dev/null
    openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
        -CAcreateserial -days 30 -out "$out/$name.pem" -extfile <(printf '%s\n' \
        "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "keyUsage=digitalSignature") 2>/dev/null
    rm "$out/$name.csr"
}
for name in server router comet-1 comet-2; do
    leaf "$name"
done
rm -f "$out/ca.srl"
echo "made in deploy/tls/$out: ca.pem; server, router, comet-1, comet-2 (.pem and .key)"
