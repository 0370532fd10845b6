#!/bin/sh
# Makes a self-signed certificate for trying the deployment out: deploy/tls/{fullchain,privkey}.pem.
# For production put the files of a real certificate (e.g. from an ACME client) in their place.
set -eu
name="${1:-localhost}"
dir="$(cd "$(dirname "$0")" && pwd)"
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -sha256 \
    -subj "/CN=${name}" -addext "subjectAltName=DNS:${name},DNS:localhost,IP:127.0.0.1" \
    -keyout "${dir}/privkey.pem" -out "${dir}/fullchain.pem"
chmod 600 "${dir}/privkey.pem"
echo "wrote ${dir}/fullchain.pem and ${dir}/privkey.pem for ${name}"
