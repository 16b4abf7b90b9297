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

# OpenSSH stores the scalar as a minimal mpint, so a scalar with leading zero bytes is shorter
# than the field. Keep generating P-521 keys (about 1 in 4 qualifies) until the stored mpint is
# at most 65 bytes, which the `ssh-key` crate's reader rejects and ours must accept.
while :; do
    rm -f p521_short_mpint_key p521_short_mpint_key.pub
    ssh-keygen -q -t ecdsa -b 521 -N "" -C "fixture-p521-short-mpint" -f p521_short_mpint_key
    python3 - p521_short_mpint_key <<'PY' && break
import base64, struct, sys
lines = open(sys.argv[1]).read().split("\n")
data = base64.b64decode("".join(l for l in lines if l and not l.startswith("-----")))
def string(buf, at):
    (n,) = struct.unpack(">I", buf[at:at + 4])
    return buf[at + 4:at + 4 + n], at + 4 + n
at = len(b"openssh-key-v1\0")
for _ in range(3):
    _, at = string(data, at)
at += 4  # key count
_, at = string(data, at)  # public blob
section, _ = string(data, at)
at = 8  # check words
for _ in range(3):  # key type, curve, point
    _, at = string(section, at)
scalar, _ = string(section, at)
sys.exit(0 if len(scalar) <= 65 else 1)
PY
done
