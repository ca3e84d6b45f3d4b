#!/usr/bin/env bash
# Install mysql-broker as a systemd service, from a checkout: the steps of
# deploy/README.md "Install", in order. Run as root; safe to run again. It
# never overwrites /etc/broker/broker.toml or the password file.
#
#   sudo deploy/install.sh [--no-restart] [PREFIX]    PREFIX: /opt/mysql-broker
#
# To upgrade, run it again from the new checkout. If the broker is running, the
# new code checks /etc/broker/broker.toml, then the broker is restarted onto it
# (a restart drains in-flight work first); a config the new code rejects leaves
# the old broker running and exits 1. --no-restart installs without restarting.
#
# A PREFIX other than the default needs ExecStart= in
# /etc/systemd/system/broker.service changed to match.
set -euo pipefail

CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESTART=yes
if [[ "${1:-}" == --no-restart ]]; then
    RESTART=no
    shift
fi
PREFIX="${1:-/opt/mysql-broker}"
CONFIG=/etc/broker/broker.toml
# The check reads the password where the unit's LoadCredential= takes it from.
CHECK=(env CREDENTIALS_DIRECTORY=/etc/broker "$PREFIX/bin/broker" check-config
    --config "$CONFIG")

[[ $EUID -eq 0 ]] || { echo "install.sh: run it as root" >&2; exit 1; }

# 1. The package in a venv of its own, from a wheel kept in $PREFIX/wheels for
# the applications' own venvs (deploy/README.md "Let applications in").
[[ -x "$PREFIX/bin/python" ]] || python3 -m venv "$PREFIX"
rm -rf "$PREFIX/wheels"
"$PREFIX/bin/pip" wheel --quiet --disable-pip-version-check --no-deps \
    --wheel-dir "$PREFIX/wheels" "$CHECKOUT"
WHEEL=("$PREFIX"/wheels/mysql_broker-*.whl)
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check "${WHEEL[0]}"
# The same version number with new code is still new code: replace it.
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    --force-reinstall "${WHEEL[0]}"

# 2. The system user and group `broker`.
install -D -m 0644 "$CHECKOUT/deploy/sysusers.d/broker.conf" /etc/sysusers.d/broker.conf
systemd-sysusers /etc/sysusers.d/broker.conf

# 3. The config, readable by the broker (group broker), never overwritten.
install -d -m 0750 -o root -g broker /etc/broker
if [[ ! -e "$CONFIG" ]]; then
    install -m 0640 -o root -g broker "$CHECKOUT/deploy/broker.toml" "$CONFIG"
fi

# 4. The unit.
install -m 0644 "$CHECKOUT/deploy/broker.service" /etc/systemd/system/broker.service
systemctl daemon-reload

echo "installed ${WHEEL[0]##*/} into $PREFIX"
if ! systemctl is-active --quiet broker; then
    echo "Next (deploy/README.md): edit $CONFIG, write the MySQL password to"
    echo "/etc/broker/mysql-password (mode 0600), check both against MySQL:"
    echo "  ${CHECK[*]} --connect"
    echo "then: systemctl enable --now broker"
    exit 0
fi
# 5. An upgrade: the running broker still runs the old code.
if ! "${CHECK[@]}" >/dev/null; then
    echo "install.sh: the new code rejects $CONFIG (above); the running broker" >&2
    echo "keeps the old code. Fix the file, then: systemctl restart broker" >&2
    exit 1
fi
if [[ $RESTART == no ]]; then
    echo "config OK; the running broker still runs the old code until:"
    echo "  systemctl restart broker"
    exit 0
fi
echo "config OK; restarting the broker onto the new code (it drains first)"
systemctl restart broker
systemctl --no-pager --lines=0 status broker
