#!/usr/bin/env bash
# Development PKI for hazina's HTTPS and mutual TLS, made with the openssl CLI.
#
#   scripts/dev-pki.sh [DIR]        (DIR defaults to ./dev-pki)
#
# Writes into DIR (refusing to overwrite anything already there):
#   ca.pem, ca.key                    a development CA (10 years)
#   server.pem, server.key            a server certificate for 127.0.0.1 and localhost
#   billing.pem, billing.key          a client certificate for the service
#                                     spiffe://payments/billing (its SAN URI)
# Keys are mode 0600. Then serve over HTTPS with client certificates:
#
#   HAZINA_TLS_CERT=DIR/server.pem HAZINA_TLS_KEY=DIR/server.key \
#   HAZINA_TLS_CLIENT_CA=DIR/ca.pem hazina serve
#
#   curl --cacert DIR/ca.pem --cert DIR/billing.pem --key DIR/billing.key \
#        https://127.0.0.1:8080/healthz
#
# For development only: a production CA key does not live next to the certificates it signs.
set -euo pipefail

dir="${1:-./dev-pki}"
service_uri="spiffe://payments/billing"
files=(ca.pem ca.key server.pem server.key billing.pem billing.key)

command -v openssl >/dev/null || { echo "dev-pki: the openssl CLI is required" >&2; exit 1; }

mkdir -p "$dir"
for f in "${files[@]}"; do
  if [[ -e "$dir/$f" ]]; then
    echo "dev-pki: $dir/$f already exists; refusing to overwrite (remove $dir to start over)" >&2
    exit 1
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 077

new_key() { # $1: path. An ECDSA P-256 key in PKCS#8, mode 0600.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

# The CA.
new_key "$work/ca.key"
openssl req -x509 -new -key "$work/ca.key" -sha256 -days 3650 \
  -subj "/CN=hazina development CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" \
  -out "$work/ca.pem"

issue() { # $1: name, $2: subject CN, $3: extensions file
  new_key "$work/$1.key"
  openssl req -new -key "$work/$1.key" -subj "/CN=$2" -out "$work/$1.csr"
  openssl x509 -req -in "$work/$1.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -CAserial "$work/ca.srl" -sha256 -days 825 \
    -extfile "$3" -out "$work/$1.pem" 2>/dev/null
}

cat >"$work/server.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier=keyid
EOF
issue server "hazina development server" "$work/server.ext"

cat >"$work/billing.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=URI:$service_uri
authorityKeyIdentifier=keyid
EOF
issue billing "billing" "$work/billing.ext"

# Check what was made before handing it over.
openssl verify -CAfile "$work/ca.pem" "$work/server.pem" "$work/billing.pem" >/dev/null

umask 022
for f in "${files[@]}"; do
  cp -p "$work/$f" "$dir/$f"
done
chmod 644 "$dir/ca.pem" "$dir/server.pem" "$dir/billing.pem"
chmod 600 "$dir/ca.key" "$dir/server.key" "$dir/billing.key"

fingerprint="$(openssl x509 -in "$dir/billing.pem" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr 'A-F' 'a-f')"
cat <<EOF
dev-pki: wrote $dir/{ca,server,billing}.{pem,key}
  server certificate: 127.0.0.1, localhost
  client certificate: $service_uri (sha256:$fingerprint)
  serve:  HAZINA_TLS_CERT=$dir/server.pem HAZINA_TLS_KEY=$dir/server.key HAZINA_TLS_CLIENT_CA=$dir/ca.pem hazina serve
  call:   curl --cacert $dir/ca.pem --cert $dir/billing.pem --key $dir/billing.key https://127.0.0.1:8080/healthz
EOF
