#!/bin/bash
# First boot of Raspberry Pi OS Bookworm, as Raspberry Pi Imager does it: cmdline.txt starts this
# script (systemd.run=) before anything else; it names the host, creates the admin user with an SSH
# key, configures Wi-Fi for NetworkManager, installs the edgefl node (edgefl/setup.sh), then
# removes itself and its cmdline.txt entry, and the system reboots into the configured OS.
# EDGEFL_ROOT (default /) configures another root instead: the tests' fake root.
set -euo pipefail
ROOT=${EDGEFL_ROOT:-}
BOOT=$ROOT/boot/firmware
. "$BOOT/edgefl/firstboot.env"   # HOSTNAME ADMIN_USER WIFI_SSID WIFI_PSK WIFI_COUNTRY WIFI_UUID
log() { printf 'edgefl firstrun: %s\n' "$*"; }
SYSTEMCTL=(systemctl)
[ -n "$ROOT" ] && SYSTEMCTL=(systemctl "--root=$ROOT")
have() { [ -z "$ROOT" ] && [ -x "$1" ]; }   # Raspberry Pi OS's own tools, on the real system only

# the host name
old=$(tr -d ' \t\n\r' < "$ROOT/etc/hostname" 2>/dev/null || true)
echo "$HOSTNAME" > "$ROOT/etc/hostname"
if grep -q '^127\.0\.1\.1' "$ROOT/etc/hosts"; then
    sed -i "s/^127\.0\.1\.1.*/127.0.1.1\t$HOSTNAME/" "$ROOT/etc/hosts"
else
    printf '127.0.1.1\t%s\n' "$HOSTNAME" >> "$ROOT/etc/hosts"
fi
log "host name ${old:-?} -> $HOSTNAME"

# the admin user (Bookworm has no default user): key-only SSH, no password
if [ -n "$ADMIN_USER" ]; then
    if have /usr/lib/userconf-pi/userconf; then
        /usr/lib/userconf-pi/userconf "$ADMIN_USER" '!'   # renames the first user, ends the first-boot wizard
    elif ! grep -q "^$ADMIN_USER:" "$ROOT/etc/passwd"; then
        useradd ${ROOT:+--prefix "$ROOT"} --create-home --user-group --shell /bin/bash --groups sudo "$ADMIN_USER"
    fi
    home=$(awk -F: -v u="$ADMIN_USER" '$1 == u {print $6}' "$ROOT/etc/passwd")
    uid=$(awk -F: -v u="$ADMIN_USER" '$1 == u {print $3}' "$ROOT/etc/passwd")
    gid=$(awk -F: -v u="$ADMIN_USER" '$1 == u {print $4}' "$ROOT/etc/passwd")
    install -d -m 0700 -o "$uid" -g "$gid" "$ROOT$home" "$ROOT$home/.ssh"
    if [ -s "$BOOT/edgefl/admin.pub" ]; then
        install -m 0600 -o "$uid" -g "$gid" "$BOOT/edgefl/admin.pub" "$ROOT$home/.ssh/authorized_keys"
        install -d -m 0755 "$ROOT/etc/ssh/sshd_config.d"
        printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' > "$ROOT/etc/ssh/sshd_config.d/edgefl.conf"
        echo "$ADMIN_USER ALL=(ALL) NOPASSWD: ALL" > "$ROOT/etc/sudoers.d/010_edgefl-admin"
        chmod 0440 "$ROOT/etc/sudoers.d/010_edgefl-admin"
        if [ -e "$ROOT/lib/systemd/system/ssh.service" ]; then "${SYSTEMCTL[@]}" enable ssh; fi
        log "admin $ADMIN_USER: SSH key only"
    fi
fi

# Wi-Fi: a NetworkManager connection (Bookworm's network stack), the regulatory country, radio on
if [ -n "$WIFI_SSID" ]; then
    conn=$ROOT/etc/NetworkManager/system-connections/edgefl-wifi.nmconnection
    install -d -m 0755 "$(dirname "$conn")"
    umask 077
    cat > "$conn" <<NMEOF
[connection]
id=edgefl-wifi
uuid=$WIFI_UUID
type=wifi
autoconnect=true

[wifi]
mode=infrastructure
ssid=$WIFI_SSID

[wifi-security]
key-mgmt=wpa-psk
psk=$WIFI_PSK

[ipv4]
method=auto

[ipv6]
addr-gen-mode=default
method=auto
NMEOF
    chmod 0600 "$conn"
    umask 022
    if have /usr/bin/raspi-config; then raspi-config nonint do_wifi_country "$WIFI_COUNTRY"; fi
    for f in "$ROOT"/var/lib/systemd/rfkill/*:wlan; do [ -e "$f" ] && echo 0 > "$f"; done
    log "Wi-Fi $WIFI_SSID (country $WIFI_COUNTRY)"
fi

bash "$BOOT/edgefl/setup.sh"

# done: never again (the Wi-Fi key goes with the settings)
rm -f "$BOOT/edgefl/firstboot.env" "$BOOT/edgefl/admin.pub" "$BOOT/firstrun.sh"
sed -i 's| systemd.run.*||g' "$BOOT/cmdline.txt"
log "done"
exit 0
