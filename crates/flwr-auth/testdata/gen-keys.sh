#!/usr/bin/env bash
# Regenerates the key fixtures in keys/ (needs OpenSSH's ssh-keygen). The outputs are committed;
# tests never run this script. Vectors produced by the Python reference live in
# ../../../testdata/vectors/ instead.
set -euo pipefail
cd "$(dirname "$0")/keys"
rm -f ./*_key ./*_key.pub

# Accepted: OpenSSH containers for every supported curve, as `ssh-keygen` writes them.
ssh-keygen -q -t ecdsa -b 256 -N "" -C "fixture-p256" -f p256_key
ssh-keygen -q -t ecdsa -b 384 -N "" -C "fixture-p384" -f p384_key
ssh-keygen -q -t ecdsa -b 521 -N "" -C "fixture-p521" -f p521_key

# Rejected, each with its own error.
ssh-keygen -q -t ed25519 -N "" -C "fixture-ed25519" -f ed25519_key
ssh-keygen -q -t rsa -b 2048 -N "" -C "fixture-rsa" -f rsa_key
ssh-keygen -q -t ecdsa -b 384 -N "flower" -C "fixture-encrypted" -f encrypted_p384_key
ssh-keygen -q -t ecdsa -b 384 -N "" -m PEM -C "fixture-pem" -f pem_p384_key
ssh-keygen -q -t ecdsa -b 384 -N "" -m PKCS8 -C "fixture-pkcs8" -f pkcs8_p384_key
