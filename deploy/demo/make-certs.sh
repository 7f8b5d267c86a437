#!/usr/bin/env bash
# DEMO ONLY. Regenerates the demo CA, Envoy server certificate and device
# client certificates under deploy/demo/certs/. The private keys are public in
# this repository: never trust this CA anywhere real.
# After running it, update the fingerprints in posture.yaml:
#   for f in certs/device-*.pem; do openssl x509 -in "$f" -noout -fingerprint -sha1; done
set -euo pipefail
cd "$(dirname "$0")/certs"
days=3650
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days $days \
  -subj "/O=fleet-authz demo/CN=fleet-authz DEMO CA (do not trust)" 2>/dev/null
issue() { # name, subject, extensions
  openssl req -newkey rsa:2048 -nodes -keyout "$1-key.pem" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out "$1.pem" \
    -days $days -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "/O=fleet-authz demo/CN=localhost" \
  "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
for d in compliant critical cve stale noncritical unknown; do
  issue "device-$d" "/O=fleet-authz demo/CN=demo device $d" "extendedKeyUsage=clientAuth"
done
rm -f ca.srl
