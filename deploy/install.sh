#!/bin/sh
# Install qbroker on a systemd host: the binary, the unit, the configuration,
# the kernel settings, the service user, and the rsyslog snippets (not enabled).
#
#   cargo build --release && sudo deploy/install.sh
#
# Options:
#   --binary PATH   the qbroker binary (default: target/release/qbroker)
#   --prefix DIR    where the binary and shared files go (default: /usr/local)
#   --start         enable and start qbroker.service (default: print the next steps)
# With DESTDIR=/some/dir set, files are staged under it (for packaging or a
# test): no user is created and systemctl/sysctl are not run.
#
# Safe to run again: the binary, unit and snippets are replaced; an existing
# /etc/qbroker/qbroker.toml is kept (the new example goes beside it as
# qbroker.toml.new).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
binary="$repo/target/release/qbroker"
prefix=/usr/local
start=no
destdir=${DESTDIR:-}

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --start) start=yes; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ ! -x "$binary" ]; then
    echo "install.sh: no qbroker binary at $binary: run 'cargo build --release' first, or pass --binary PATH" >&2
    exit 1
fi
if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or set DESTDIR to stage the files)" >&2
    exit 1
fi

say() { echo "install.sh: $*"; }

# The service user (its home is the state directory; no login).
if [ -z "$destdir" ]; then
    if ! getent passwd qbroker >/dev/null; then
        if command -v systemd-sysusers >/dev/null 2>&1; then
            install -D -m 0644 "$here/qbroker.sysusers" /usr/lib/sysusers.d/qbroker.conf
            systemd-sysusers /usr/lib/sysusers.d/qbroker.conf
        else
            useradd --system --user-group --home-dir /var/lib/qbroker --no-create-home \
                --shell /usr/sbin/nologin --comment "qbroker audit broker" qbroker
        fi
        say "created user qbroker"
    fi
else
    install -D -m 0644 "$here/qbroker.sysusers" "$destdir/usr/lib/sysusers.d/qbroker.conf"
fi

# The binary.
install -D -m 0755 "$binary" "$destdir$prefix/bin/qbroker"
say "installed $prefix/bin/qbroker"

# The unit, pointing at the binary's prefix.
unit="$destdir/etc/systemd/system/qbroker.service"
mkdir -p "$(dirname "$unit")"
sed -e "s#/usr/local/bin/qbroker#$prefix/bin/qbroker#g" \
    -e "s#/usr/local/share/doc/qbroker#$prefix/share/doc/qbroker#g" \
    "$here/qbroker.service" > "$unit.tmp"
chmod 0644 "$unit.tmp"
mv "$unit.tmp" "$unit"
say "installed /etc/systemd/system/qbroker.service"

# The configuration: readable by the service only (it may hold tokens).
conf_dir="$destdir/etc/qbroker"
mkdir -p "$conf_dir"
chmod 0750 "$conf_dir"
if [ -e "$conf_dir/qbroker.toml" ]; then
    install -m 0640 "$here/qbroker.toml" "$conf_dir/qbroker.toml.new"
    say "kept /etc/qbroker/qbroker.toml; the new example is /etc/qbroker/qbroker.toml.new"
else
    install -m 0640 "$here/qbroker.toml" "$conf_dir/qbroker.toml"
    say "installed /etc/qbroker/qbroker.toml (edit the [[targets]] url and token first)"
fi
if [ -z "$destdir" ]; then
    chgrp -R qbroker "$conf_dir"
fi

# Kernel settings.
install -D -m 0644 "$here/sysctl.d/90-qbroker.conf" "$destdir/etc/sysctl.d/90-qbroker.conf"

# Documentation and the rsyslog snippets (enable one by copying it to /etc/rsyslog.d).
share="$destdir$prefix/share/qbroker"
install -D -m 0644 "$here/rsyslog/10-qbroker-forward.conf" "$share/rsyslog/10-qbroker-forward.conf"
install -D -m 0644 "$here/rsyslog/10-qbroker-omprog.conf" "$share/rsyslog/10-qbroker-omprog.conf"
doc="$destdir$prefix/share/doc/qbroker"
install -D -m 0644 "$repo/README.md" "$doc/README.md"
for f in deploy.md troubleshooting.md; do
    if [ -e "$repo/docs/$f" ]; then
        install -D -m 0644 "$repo/docs/$f" "$doc/$f"
    fi
done

if [ -n "$destdir" ]; then
    say "staged under $destdir"
    exit 0
fi

sysctl --system >/dev/null || say "sysctl --system failed; apply /etc/sysctl.d/90-qbroker.conf by hand"
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi
if "$prefix/bin/qbroker" check-config /etc/qbroker/qbroker.toml >/dev/null 2>&1; then
    say "/etc/qbroker/qbroker.toml is valid"
else
    say "/etc/qbroker/qbroker.toml does not validate yet: $prefix/bin/qbroker check-config /etc/qbroker/qbroker.toml"
fi
if [ "$start" = yes ]; then
    systemctl enable --now qbroker.service
    systemctl --no-pager status qbroker.service || true
else
    cat <<EOF
Next:
  1. edit /etc/qbroker/qbroker.toml (targets, clusters), then
     $prefix/bin/qbroker check-config /etc/qbroker/qbroker.toml
  2. systemctl enable --now qbroker
  3. point the clusters at this host (docs/deploy.md, "Cluster side"), then
     $prefix/bin/qbroker doctor --config /etc/qbroker/qbroker.toml
EOF
fi
