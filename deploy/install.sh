#!/usr/bin/env bash
# Install mysql-broker as a systemd service, from a checkout: the steps of
# deploy/README.md "Install", in order. Run as root; safe to run again (to
# upgrade: it reinstalls the package and the unit, and never overwrites
# /etc/broker/broker.toml or the password file).
#
#   sudo deploy/install.sh [PREFIX]       PREFIX defaults to /opt/mysql-broker
#
# A PREFIX other than the default needs ExecStart= in
# /etc/systemd/system/broker.service changed to match.
set -euo pipefail

CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${1:-/opt/mysql-broker}"

[[ $EUID -eq 0 ]] || { echo "install.sh: run it as root" >&2; exit 1; }

# 1. The package in a venv of its own.
[[ -x "$PREFIX/bin/python" ]] || python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check "$CHECKOUT"

# 2. The system user and group `broker`.
install -D -m 0644 "$CHECKOUT/deploy/sysusers.d/broker.conf" /etc/sysusers.d/broker.conf
systemd-sysusers /etc/sysusers.d/broker.conf

# 3. The config, readable by the broker (group broker), never overwritten.
install -d -m 0750 -o root -g broker /etc/broker
if [[ ! -e /etc/broker/broker.toml ]]; then
    install -m 0640 -o root -g broker "$CHECKOUT/deploy/broker.toml" \
        /etc/broker/broker.toml
fi

# 4. The unit.
install -m 0644 "$CHECKOUT/deploy/broker.service" /etc/systemd/system/broker.service
systemctl daemon-reload

echo "installed. Next (deploy/README.md): edit /etc/broker/broker.toml, write the"
echo "MySQL password to /etc/broker/mysql-password (mode 0600), then:"
echo "  systemctl enable --now broker"
