#!/bin/sh
# (a copy of docker/device-linux/entrypoint.sh: each build context is self-contained)
# Start sshd in the foreground for `compleak devices up`. Extra arguments are passed to sshd
# (the harness adds -p PORT, -h HOSTKEY and ListenAddress=127.0.0.1). Key-only root login; no passwords.
set -eu
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e \
  -o PasswordAuthentication=no \
  -o KbdInteractiveAuthentication=no \
  -o PermitRootLogin=prohibit-password \
  -o UsePAM=no \
  -o UseDNS=no \
  "$@"
