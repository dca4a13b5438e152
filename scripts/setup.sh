#!/usr/bin/env bash
# Prepare this machine for vigil (Debian 12, as root): the Debian packages vigil and its
# tests use, and the Python environment in .venv from the locked requirements.
# Idempotent and quick when everything is already there. Usage: scripts/setup.sh [demo|test]
set -euo pipefail
cd "$(dirname "$0")/.."

purpose="${1:-demo}"
debs=(python3 python3-venv iproute2 iputils-ping iputils-arping util-linux e2fsprogs procps psmisc curl)
# BIND: the lab's DNS server, which the demo's and the tests' dns kit resources update
debs+=(bind9 bind9-utils)
# the mail organisation (vigil lab up --mail) and the mail kit: Postfix, Dovecot, OpenLDAP;
# installed without configuring or starting a system instance (preseeded below)
mail_debs=(postfix postfix-ldap dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-ldap
    dovecot-sieve
    slapd ldap-utils)
debs+=("${mail_debs[@]}")
if [ "$purpose" = test ]; then
    # real services only the tests run: etcd (store); BIND's dig and nsupdate
    debs+=(etcd-server etcd-client bind9-dnsutils)
    # the mirror kit's tests and benchmark: fio (bench/mirror.py), wipefs (util-linux)
    debs+=(fio)
    # the web UI's browser tests: Debian's Chromium, driven by playwright (launched by path)
    debs+=(chromium fonts-dejavu-core)
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "vigil setup: run as root (network namespaces, mounts and packages need it)" >&2
    exit 1
fi

missing=()
for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "vigil setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # no system mail server and no system directory: the lab runs its own instances
    printf '%s\n' 'postfix postfix/main_mailer_type select No configuration' \
        'slapd slapd/no_configuration boolean true' | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python environment: Debian's python3 (3.11 on Debian 12), dependencies pinned with
# hashes in requirements.lock (regenerate with: uv pip compile pyproject.toml --extra dev
# --python-version 3.11 --generate-hashes -o requirements.lock).
stamp=.venv/.vigil-lock-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
    echo "vigil setup: creating .venv from requirements.lock"
    rm -rf .venv
    /usr/bin/python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
    .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    touch "$stamp"
fi

# The web UI's browser tests take axe-core (and the released htmx, to check the vendored
# copy) from npm, as tests/web/package-lock.json pins them.
if [ "$purpose" = test ]; then
    npm_stamp=tests/web/node_modules/.vigil-lock-$(sha256sum tests/web/package-lock.json | cut -c1-16)
    if [ ! -e "$npm_stamp" ]; then
        echo "vigil setup: installing tests/web's npm packages from package-lock.json"
        npm ci --prefix tests/web --no-audit --no-fund --loglevel=error >/dev/null
        touch "$npm_stamp"
    fi
fi
