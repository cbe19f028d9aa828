#!/usr/bin/env bash
# Loa's one-command install on a station (Raspberry Pi OS Bookworm, or plain Debian 12):
#
#     sudo ./install/install.sh                  # from a source checkout
#     sudo ./install/install.sh --wheel loa-0.1.0-py3-none-any.whl
#
# What it does, each step only when something differs (a second run changes nothing):
#   - apt packages the agent needs at run time (and to build PyAudio, which has no Arm wheel);
#   - the system user `loa` (home /var/lib/loa, no login shell) in groups gpio and audio;
#   - Loa in its own venv at PREFIX/releases/<version>, and PREFIX/current -> releases/<version>
#     switched with an atomic rename (the A/B updates of a later issue switch the same link);
#     /usr/local/bin/loa-agent and loa-provision point through `current`; the boot guard
#     (install/loa-boot-guard: rollback and update installs at each start) in PREFIX/bin;
#   - /etc/loa (root:loa 0750) and /var/lib/loa (loa:loa 0700);
#   - systemd/loa-agent.service, its ExecStart pointed at PREFIX/current;
#   - field settings: a journald size cap, the hardware watchdog, fake-hwclock, and the boot-time
#     relay line for config.txt (printed, or appended with --set-boot-gpio);
#   - then `loa-provision check` when the station is provisioned, else the next steps.
#
# --root DIR writes the same files under DIR (as DESTDIR would) and touches nothing else on the
# machine: no apt, no users or groups, no systemctl; what it would have done is written to
# DIR/loa-install-actions.log. It exists for tests and for inspecting the result. A venv works
# only at the path it was made at, so a tree made with --root is not something to copy onto a
# card: install on the station itself.
set -euo pipefail
umask 022 # sudo may carry a user's umask 077; the release must be readable by the loa user

PROG=install.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=$(dirname "$HERE") # the checkout this script lives in

PREFIX=/opt/loa
ROOT=""
WHEEL=""
WHEELHOUSE=""
PYTHON=/usr/bin/python3
DO_APT=1
DO_ENABLE=1
SET_BOOT_GPIO=0
ARGS="$*"

usage() {
    cat <<'EOF'
usage: sudo ./install/install.sh [options]

  --wheel FILE       install this Loa wheel instead of the checkout the script is in
  --wheelhouse DIR   offline: take Loa's dependencies only from DIR (pip --no-index
                     --find-links DIR); fill it elsewhere with `pip download` or `pip wheel`
  --prefix DIR       where Loa goes (default /opt/loa): DIR/releases/<version>, DIR/current
  --root DIR         write everything under DIR and change nothing else (tests, inspection)
  --python PY        the Python 3.11+ the venv is made from (default /usr/bin/python3)
  --no-apt           do not install apt packages
  --no-enable        install the unit but neither enable nor start it
  --set-boot-gpio    append the boot-time relay line to config.txt (else it is only printed)
  -h, --help         this text
EOF
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}

while (($#)); do
    case "$1" in
    --wheel) WHEEL=${2:?--wheel needs a file} && shift ;;
    --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory} && shift ;;
    --prefix) PREFIX=${2:?--prefix needs a directory} && shift ;;
    --root) ROOT=${2:?--root needs a directory} && shift ;;
    --python) PYTHON=${2:?--python needs an interpreter} && shift ;;
    --no-apt) DO_APT=0 ;;
    --no-enable) DO_ENABLE=0 ;;
    --set-boot-gpio) SET_BOOT_GPIO=1 ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && exit 2 ;;
    esac
    shift
done

[[ $PREFIX == /* ]] || die "--prefix must be an absolute path, got $PREFIX"
PREFIX=${PREFIX%/}
if [[ -n $ROOT ]]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    DO_APT=0 # the machine is not ours to change
elif ((EUID != 0)); then
    die "run as root: sudo $0 $ARGS"
fi
if [[ -n $WHEEL ]]; then
    [[ -f $WHEEL ]] || die "no such wheel: $WHEEL"
    WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
else
    [[ -f $SOURCE/pyproject.toml ]] || die "$SOURCE is not a Loa checkout: give --wheel FILE"
fi
if [[ -n $WHEELHOUSE ]]; then
    [[ -d $WHEELHOUSE ]] || die "no such directory: $WHEELHOUSE"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
fi

CHANGES=0
ACTIONS_LOG="$ROOT/loa-install-actions.log"
[[ -z $ROOT ]] || : >"$ACTIONS_LOG" # written afresh: two identical runs leave identical logs

changed() {
    CHANGES=$((CHANGES + 1))
    echo "  changed: $*"
}

# A command that changes the machine itself (users, services): run it, or with --root only
# write it down.
system() {
    if [[ -n $ROOT ]]; then
        echo "$*" >>"$ACTIONS_LOG"
    elif [[ $1 == systemctl && $2 != enable && ! -d /run/systemd/system ]]; then
        # In a chroot or an image build there is no running systemd to reload or start; the
        # files are in place and take effect at boot. (enable works offline: it makes links.)
        echo "systemd is not running here: skipped: $*"
    else
        "$@"
    fi
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# --- Python ------------------------------------------------------------------------------------
# Debian's own python3 (3.11 on Bookworm) is what the venv is made from; apt installs it below,
# so the check waits until then when apt runs.

check_python() {
    command -v "$PYTHON" >/dev/null || die "no Python at $PYTHON (give --python)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$PYTHON is older than 3.11 (Raspberry Pi OS Bookworm has 3.11)"
}

# --- apt ---------------------------------------------------------------------------------------
# At run time the agent needs Python with venv, ffmpeg (decoding, loudness), the PortAudio
# library under PyAudio, ALSA's tools (aplay -l, amixer: what a technician checks the sound
# card with) and the CA bundle for https live streams. PyAudio has no wheel on PyPI for Linux on
# Arm (piwheels has some, for 32-bit only), so pip builds it: portaudio19-dev, python3-dev and gcc
# stay installed because every update of Loa may build it again. espeak-ng speaks the
# technician's `loa-provision audio-test --speech` (about 4 MB with its voices, Vietnamese among
# them). No broker and no MQTT clients: the station only connects out.
APT_PACKAGES=(python3 python3-venv ffmpeg libportaudio2 alsa-utils ca-certificates
    portaudio19-dev python3-dev gcc espeak-ng)

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "installing apt packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    changed "apt packages ${missing[*]}"
}

if ((DO_APT)); then
    apt_install "${APT_PACKAGES[@]}"
    # fake-hwclock: a Pi has no battery-backed clock, so it boots at 1970 (or the last kernel
    # build) until NTP answers, and the agent would refuse signed playlists as not yet valid.
    # fake-hwclock saves the time hourly and at shutdown and restores it at boot: the clock
    # starts near the truth. Raspberry Pi OS ships it; where apt does not know it, say so.
    if apt-cache show fake-hwclock >/dev/null 2>&1; then
        apt_install fake-hwclock
    else
        echo "fake-hwclock is not available here: the clock starts wrong after a power cut until NTP answers"
    fi
else
    echo "apt: skipped (--no-apt or --root); the agent needs: ${APT_PACKAGES[*]} fake-hwclock"
fi
check_python

# --- user and groups ---------------------------------------------------------------------------
# gpio and audio exist on Raspberry Pi OS; plain Debian has audio but no gpio, so create what is
# missing and the same unit works on both.

for group in gpio audio; do
    if [[ -n $ROOT ]] || ! getent group "$group" >/dev/null; then
        system groupadd --system "$group"
        [[ -n $ROOT ]] || changed "group $group"
    fi
done
if [[ -n $ROOT ]] || ! id loa >/dev/null 2>&1; then
    system useradd --system --user-group --home-dir /var/lib/loa --no-create-home \
        --shell /usr/sbin/nologin --groups gpio,audio --comment "Loa station agent" loa
    [[ -n $ROOT ]] || changed "user loa"
else
    for group in gpio audio; do
        if ! id -nG loa | tr ' ' '\n' | grep -qx "$group"; then
            usermod -aG "$group" loa
            changed "user loa joins $group"
        fi
    done
fi

# --- files, with their owner and mode ----------------------------------------------------------
# Under --root the owners are only logged: the loa user does not exist there.

ensure_owner_mode() { # PATH OWNER GROUP MODE
    local path=$1 owner=$2 group=$3 mode=$4
    if [[ "$(stat -c '%a' "$path")" != "${mode#0}" ]]; then
        chmod "$mode" "$path"
        changed "mode $mode $path"
    fi
    if [[ -n $ROOT ]]; then
        echo "chown $owner:$group ${path#"$ROOT"}" >>"$ACTIONS_LOG"
    elif [[ "$(stat -c '%U:%G' "$path")" != "$owner:$group" ]]; then
        chown "$owner:$group" "$path"
        changed "owner $owner:$group $path"
    fi
}

ensure_dir() { # PATH OWNER GROUP MODE
    if [[ ! -d $1 ]]; then
        mkdir -p "$1"
        changed "directory $1"
    fi
    ensure_owner_mode "$@"
}

# Replace DEST by SRC only when the content differs, through a rename (never half a file).
install_file() { # SRC DEST MODE
    local src=$1 dest=$2 mode=$3
    mkdir -p "$(dirname "$dest")"
    if ! cmp -s "$src" "$dest"; then
        install -m "$mode" "$src" "$dest.loa-new"
        mv -f "$dest.loa-new" "$dest"
        changed "$dest"
    fi
    ensure_owner_mode "$dest" root root "$mode"
}

ensure_dir "$ROOT/etc/loa" root loa 0750
ensure_dir "$ROOT/var/lib/loa" loa loa 0700

# --- Loa itself: PREFIX/releases/<version>, PREFIX/current ------------------------------------
# Each release is a complete venv of its own; the running agent's files are never modified by an
# install of another version, and `current` moves from one to the other in one rename. A release
# counts as installed only once its .loa-source marker is written, last: an interrupted install
# is redone by the next run. The marker holds a hash of what was installed, so a changed checkout
# of the same version is rebuilt in place, with the agent stopped meanwhile when it runs from it.

if [[ -n $WHEEL ]]; then
    VERSION=$(basename "$WHEEL" | cut -d- -f2)
    TARGET=$WHEEL
    FINGERPRINT=$(sha256sum "$WHEEL" | cut -d' ' -f1)
else
    VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SOURCE/pyproject.toml")
    # pip builds in the source tree (build/, *.egg-info): build from a copy of just what the
    # package is made of, so a root-owned build never lands in someone's checkout.
    TARGET=$TMP/src
    mkdir -p "$TARGET"
    for part in pyproject.toml README.md agent hal provisioning province; do
        cp -r "$SOURCE/$part" "$TARGET/"
    done
    find "$TARGET" -name __pycache__ -prune -exec rm -rf {} +
    FINGERPRINT=$(cd "$TARGET" && find . -type f -print0 | LC_ALL=C sort -z |
        xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
fi
[[ $VERSION =~ ^[0-9A-Za-z.+_-]+$ ]] || die "cannot tell the version of Loa to install (got '$VERSION')"

BASE="$ROOT$PREFIX"
RELEASE="$BASE/releases/$VERSION"
ensure_dir "$BASE" root root 0755
ensure_dir "$BASE/releases" root root 0755

RELEASE_CHANGED=0
STOPPED=0
if [[ "$(cat "$RELEASE/.loa-source" 2>/dev/null)" != "$FINGERPRINT" ]]; then
    echo "installing Loa $VERSION into $RELEASE"
    if [[ -z $ROOT && -d $RELEASE && "$(readlink -f "$BASE/current")" == "$RELEASE" ]] &&
        systemctl is-active --quiet loa-agent; then
        systemctl stop loa-agent # its files are about to go; started again below
        STOPPED=1
        changed "loa-agent stopped for the rebuild"
    fi
    rm -rf "$RELEASE"
    "$PYTHON" -m venv "$RELEASE"
    pip_args=(--quiet --disable-pip-version-check)
    [[ -z $WHEELHOUSE ]] || pip_args+=(--no-index --find-links "$WHEELHOUSE")
    "$RELEASE/bin/pip" install "${pip_args[@]}" "$TARGET"
    # gpiozero 2 drives the pins through lgpio when it can: the only driver that works on a
    # Pi 5, and the one Raspberry Pi OS uses on every model. It is a Pi-only package (not in
    # Loa's dependencies); without it gpiozero falls back to its native driver (Pi 4 and older).
    if [[ -z $ROOT ]] && grep -qs "Raspberry Pi" /proc/device-tree/model; then
        "$RELEASE/bin/pip" install "${pip_args[@]}" lgpio ||
            echo "WARNING: lgpio did not install: relays use gpiozero's native driver (not on a Pi 5)"
    fi
    "$RELEASE/bin/loa-provision" --help >/dev/null # it runs, or the release is not installed
    echo "$FINGERPRINT" >"$RELEASE/.loa-source"
    changed "release $VERSION"
    RELEASE_CHANGED=1
fi

if [[ "$(readlink "$BASE/current" 2>/dev/null)" != "releases/$VERSION" ]]; then
    # Relative, so the link is right under --root too; rename(2) makes the switch atomic.
    ln -sfn "releases/$VERSION" "$BASE/.current.loa-new"
    mv -Tf "$BASE/.current.loa-new" "$BASE/current"
    changed "$PREFIX/current -> releases/$VERSION"
    RELEASE_CHANGED=1
fi

# The boot guard (the unit's ExecStartPre): beside the releases, never in one, so that no
# release, however broken, can take the rollback down with it.
install_file "$HERE/loa-boot-guard" "$BASE/bin/loa-boot-guard" 0755

for tool in loa-agent loa-provision; do
    link="$ROOT/usr/local/bin/$tool"
    if [[ "$(readlink "$link" 2>/dev/null)" != "$PREFIX/current/bin/$tool" ]]; then
        mkdir -p "$(dirname "$link")"
        ln -sfn "$PREFIX/current/bin/$tool" "$link"
        changed "$link"
    fi
done

# The unit's Documentation= names /usr/share/doc/loa/README.md; a wheel carries no docs.
if [[ -z $WHEEL ]]; then
    install_file "$SOURCE/README.md" "$ROOT/usr/share/doc/loa/README.md" 0644
    [[ ! -f $SOURCE/docs/operations.md ]] ||
        install_file "$SOURCE/docs/operations.md" "$ROOT/usr/share/doc/loa/operations.md" 0644
fi

# --- systemd -----------------------------------------------------------------------------------

UNIT_SRC="$SOURCE/systemd/loa-agent.service"
[[ -f $UNIT_SRC ]] || UNIT_SRC="$HERE/../systemd/loa-agent.service"
[[ -f $UNIT_SRC ]] || die "no systemd/loa-agent.service beside this script"
# Whatever venv the unit in the tree names (ExecStart=, ExecStopPost=, with systemd's -+!@:
# prefixes), every loa-* command runs from the release `current` names.
# The boot guard is the exception: it runs from PREFIX/bin, outside every release.
sed -E -e "/loa-boot-guard/!s#^(Exec[A-Za-z]+=[-+!@:]*)[^ ]*/bin/(loa-[a-z-]+)( |\$)#\1$PREFIX/current/bin/\2\3#" \
    -e "/loa-boot-guard/s#^(Exec[A-Za-z]+=[-+!@:]*)[^ ]*/bin/loa-boot-guard( |\$)#\1$PREFIX/bin/loa-boot-guard\2#" \
    -e "/loa-boot-guard/s#--prefix [^ ]*#--prefix $PREFIX#" \
    "$UNIT_SRC" >"$TMP/loa-agent.service"
grep -q "^ExecStart=$PREFIX/current/bin/loa-agent " "$TMP/loa-agent.service" ||
    die "cannot point ExecStart in $UNIT_SRC at $PREFIX/current"
grep -q "^ExecStartPre=+$PREFIX/bin/loa-boot-guard .*--prefix $PREFIX\$" "$TMP/loa-agent.service" ||
    die "cannot point the boot guard in $UNIT_SRC at $PREFIX/bin"
if grep -E '^Exec' "$TMP/loa-agent.service" | grep -v "$PREFIX/current/bin/" |
    grep -v "$PREFIX/bin/loa-boot-guard " | grep -q loa-; then
    die "a loa-* command in $UNIT_SRC is not under $PREFIX/current"
fi
UNIT_BEFORE=$CHANGES
install_file "$TMP/loa-agent.service" "$ROOT/etc/systemd/system/loa-agent.service" 0644
UNIT_CHANGED=$((CHANGES - UNIT_BEFORE))

# journald: a station writes its log to an SD card for years. Persistent, so the log of the boot
# before a watchdog reset or a power cut is still there (journalctl -b -1); capped at 100 MB,
# weeks of an agent's normal log, a small share of even an 8 GB card; and it gives way when less
# than 500 MB is free, since the media cache and the outbox matter more than old log lines.
# The volatile journal (before /var is up, or on a read-only root) lives in RAM: 16 MB of it.
cat >"$TMP/journald.conf" <<'EOF'
# Loa (install/install.sh): bounded logs on an SD card.
[Journal]
Storage=persistent
SystemMaxUse=100M
SystemKeepFree=500M
SystemMaxFileSize=16M
RuntimeMaxUse=16M
MaxRetentionSec=3month
EOF
JOURNAL_BEFORE=$CHANGES
install_file "$TMP/journald.conf" "$ROOT/etc/systemd/journald.conf.d/loa.conf" 0644
JOURNAL_CHANGED=$((CHANGES - JOURNAL_BEFORE))

# The hardware watchdog: systemd pets the SoC's watchdog, and when the whole machine hangs
# (kernel, SD card, power brown-out) the board resets itself instead of staying silent until a
# technician drives out. 15 s is the longest the Pi's watchdog (bcm2835_wdt) allows; a reboot
# that itself hangs is forced after 2 minutes.
cat >"$TMP/watchdog.conf" <<'EOF'
# Loa (install/install.sh): reset the board when it hangs.
[Manager]
RuntimeWatchdogSec=15
RebootWatchdogSec=2min
EOF
WATCHDOG_BEFORE=$CHANGES
install_file "$TMP/watchdog.conf" "$ROOT/etc/systemd/system.conf.d/loa-watchdog.conf" 0644
WATCHDOG_CHANGED=$((CHANGES - WATCHDOG_BEFORE))

STATION_TOML="$ROOT/etc/loa/station.toml"
PROVISIONED=0
[[ ! -f $STATION_TOML ]] || PROVISIONED=1

((WATCHDOG_CHANGED == 0)) || system systemctl daemon-reexec # system.conf is read at (re)exec
((JOURNAL_CHANGED == 0)) || system systemctl restart systemd-journald
((UNIT_CHANGED == 0)) || system systemctl daemon-reload
if ((DO_ENABLE)); then
    # Enabled once provisioned: without its config the agent would only fail and restart every
    # 5 s. After `loa-provision init` and `enroll`, run this script again or enable it by hand.
    if ((PROVISIONED)); then
        if [[ -n $ROOT ]] || ! systemctl is-enabled --quiet loa-agent; then
            system systemctl enable loa-agent
            [[ -n $ROOT ]] || changed "loa-agent enabled"
        fi
        if ((RELEASE_CHANGED || UNIT_CHANGED)); then
            system systemctl restart loa-agent
        elif [[ -n $ROOT ]] || ! systemctl is-active --quiet loa-agent; then
            system systemctl start loa-agent
        fi
    fi
fi
((STOPPED == 0)) || systemctl is-active --quiet loa-agent || systemctl start loa-agent

# --- the boot-time relay line ------------------------------------------------------------------
# Between power-on and the agent's start (20-40 s) the relay pins float or sit at the SoC's
# defaults, and a relay board may click the amplifier and the zones on. config.txt's gpio= line
# makes the firmware drive them to "off" before Linux starts: dl (low) for relays that are on
# when high, dh for active-low boards.

boot_gpio_line() { # prints the line, or nothing when the config names no relay pins
    "$PYTHON" - "$STATION_TOML" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    gpio = tomllib.load(f).get("gpio", {})
pins = [gpio["amp_pin"]] if isinstance(gpio.get("amp_pin"), int) else []
pins += [p for p in gpio.get("zones", {}).values() if isinstance(p, int) and p not in pins]
if pins:
    level = "dl" if gpio.get("active_high", True) else "dh"
    print(f"gpio={','.join(str(p) for p in pins)}=op,{level}")
EOF
}

CONFIG_TXT=""
for candidate in /boot/firmware/config.txt /boot/config.txt; do # Bookworm's, then older
    if [[ -f "$ROOT$candidate" ]]; then
        CONFIG_TXT="$ROOT$candidate"
        break
    fi
done
MARKER="# Loa: relays off from power-on until the agent runs (install/install.sh)"
if ((PROVISIONED)); then
    GPIO_LINE=$(boot_gpio_line)
    if [[ -z $GPIO_LINE ]]; then
        echo "boot relay line: $STATION_TOML names no relay pins"
    elif ((SET_BOOT_GPIO)) && [[ -n $CONFIG_TXT ]]; then
        # Our block is the marker, [all] (so no [pi4]-style section above captures it) and the
        # line; a later run with other pins replaces the line under the marker.
        "$PYTHON" - "$CONFIG_TXT" "$MARKER" "$GPIO_LINE" >"$TMP/config.txt" <<'EOF'
import sys
path, marker, line = sys.argv[1:]
lines = open(path, encoding="utf-8").read().splitlines()
if marker in lines:
    at = lines.index(marker)
    lines[at + 1 : at + 3] = ["[all]", line]
else:
    lines += ["", marker, "[all]", line]
print("\n".join(lines))
EOF
        if ! cmp -s "$TMP/config.txt" "$CONFIG_TXT"; then
            # Written beside it (same file system) and renamed: a power cut leaves the old
            # file or the new one, never a half-written boot configuration.
            cp -p "$CONFIG_TXT" "$CONFIG_TXT.loa-new" # keeps its mode
            cat "$TMP/config.txt" >"$CONFIG_TXT.loa-new"
            sync "$CONFIG_TXT.loa-new"
            mv -f "$CONFIG_TXT.loa-new" "$CONFIG_TXT"
            changed "$CONFIG_TXT: $GPIO_LINE (takes effect at the next boot)"
        fi
    else
        echo "boot relay line: add these lines at the end of ${CONFIG_TXT:-/boot/firmware/config.txt}"
        echo "(or run again with --set-boot-gpio), then reboot:"
        echo "    $MARKER"
        echo "    [all]"
        echo "    $GPIO_LINE"
    fi
fi

# --- done --------------------------------------------------------------------------------------

if ((CHANGES)); then
    echo "Loa $VERSION installed in $ROOT$PREFIX: $CHANGES changes"
else
    echo "Loa $VERSION installed in $ROOT$PREFIX: nothing changed"
fi

if ((PROVISIONED)); then
    if [[ -n $ROOT ]]; then
        echo "$PREFIX/current/bin/loa-provision check" >>"$ACTIONS_LOG"
    else
        echo "loa-provision check:"
        if "$PREFIX/current/bin/loa-provision" check; then
            echo "the station is ready to go on air"
        else
            echo "the install is done, but the station is NOT ready: fix what check shows" \
                "(docs: /usr/share/doc/loa/operations.md)"
        fi
    fi
else
    cat <<EOF
next steps (docs/operations.md, "Enroll a new station"):
  1. sudo loa-provision init --province PP --commune CCCCC --station NAME \\
         --keyring keyring.json --broker mqtts://HOST:8883 --amp-pin 17 --zone cho=27
  2. send /etc/loa/keys/station.csr and station.pub to the province: loa-province enroll
  3. sudo loa-provision enroll station.crt --ca ca.crt
  4. sudo $0 --set-boot-gpio $ARGS
     (again: now it enables and starts the agent and sets the boot relay line)
  5. sudo loa-provision check
EOF
fi
