#!/usr/bin/env bash
# Installs the LiveKit agent appliance on this machine (Debian 12; Ubuntu 24.04 best effort), then hands over to
# `appliance install`, which creates the service user, configs and secrets and starts everything.
#
# What this script does, each step skipped when already done (re-running is quick and changes nothing):
#   1. preflight, before anything changes: root, OS, architecture, Python and Redis versions, CPUs/RAM/disk, ports;
#   2. Debian packages (redis-server, postgresql, python3-venv, ...), without creating or starting Debian's own
#      Redis and PostgreSQL instances (what existed before is recorded in $STATE_FILE for `appliance uninstall`);
#   3. the venv /opt/appliance/venv with this checkout installed in it (a copy: the checkout may go away after);
#   4. livekit-server (when the appliance bundles one) at /opt/appliance/bin/livekit-server;
#   5. exec /opt/appliance/venv/bin/appliance install with every option passed through (the LiveKit API secret,
#      read from its file or standard input before anything changes, on a descriptor: never on a command line).
# Everything it prints is also written to /var/log/appliance/install-<time>.log.
set -eEuo pipefail

readonly APPLIANCE_HOME=/opt/appliance
readonly VENV=$APPLIANCE_HOME/venv
readonly LOG_DIR=/var/log/appliance
# What existed before the first install (Debian's services, the packages we added); read by `appliance uninstall`.
readonly STATE_FILE=/var/lib/appliance/install-state.env
readonly CREATECLUSTER_CONF=/etc/postgresql-common/createcluster.d/50-appliance.conf
readonly POLICY_RC=/usr/sbin/policy-rc.d
readonly CLI_LINK=/usr/local/bin/appliance
readonly PACKAGES=(redis-server postgresql python3 python3-venv iproute2 ca-certificates)
readonly MIN_PYTHON=3.11 MIN_REDIS=7.0
# The documented minimum (refused below) and the size the appliance is built for (warned below). MemTotal of a
# "4 GB" VM is ~3.8 GiB and of a "32 GB" one ~31 GiB, hence the MiB figures.
readonly MIN_CPUS=2 MIN_RAM_MIB=3500 MIN_DISK_MIB=3072
readonly GOOD_CPUS=16 GOOD_RAM_MIB=30000 GOOD_DISK_MIB=20480
# The livekit-server version bundled: one home, config/livekit-server.version (scripts/build-livekit-server builds it).
LIVEKIT_VERSION=$(<"$(dirname "${BASH_SOURCE[0]}")/config/livekit-server.version")
readonly LIVEKIT_VERSION
# sha256 of the official release tarballs (github.com/livekit/livekit/releases, livekit_<v>_linux_<arch>.tar.gz).
# The download route is used only for an architecture pinned here.
declare -A LIVEKIT_SHA256=([amd64]="" [arm64]="")

usage() {
    cat <<'EOF'
Usage: ./install.sh [OPTIONS]        (as root, or with sudo)

Installs the LiveKit agent appliance and starts it; safe to re-run (that is also the upgrade).

Options (passed through to `appliance install`):
  --role all|worker            all (default): Redis, PostgreSQL, LiveKit and the agents on this box;
                               worker: the agents only, pointed at a shared LiveKit, Redis and PostgreSQL
  --livekit-url URL            use this LiveKit server (ws[s]:// or http[s]://) instead of a bundled one
  --livekit-api-key KEY        its API key (with --livekit-url)
  --livekit-api-secret-file FILE
                               a file holding its API secret, '-' for standard input (with --livekit-url;
                               one trailing newline is dropped); never on the command line
  --livekit-server-bin PATH    the livekit-server binary to bundle (else: built with Go, or downloaded)
  --node-ip IP                 the address clients reach the bundled LiveKit at
  --domain NAME                the public name clients use (TLS terminated in front, see README)
  --yes                        do not ask; install non-interactively
  -h, --help                   this help

Requirements: root; Debian 12 (tested) or Ubuntu 24.04 (best effort); amd64 or arm64; Python >= 3.11 and
Redis >= 7.0 from the distribution; at least 2 vCPU, 4 GB RAM and 3 GB free disk (built for 16 vCPU and 32 GB:
less is warned about); the appliance's ports free.
EOF
}

# A user's error: one line, no trap message (nothing has failed, nothing to resume).
die() {
    echo "error: $*" >&2
    exit 1
}

# ---- options: validated here, then passed through ----------------------------------------------------------------

role="" livekit_url="" api_key="" secret_file="" server_bin="" node_ip="" domain="" yes=0
# What `appliance install` gets: the options as given, but the secret file's name, which becomes a descriptor.
handover=()
parse_options() {
    local opt value
    while (($#)); do
        opt=$1 value=""
        case $opt in
            -h | --help) usage; exit 0 ;;
            --yes) yes=1; handover+=(--yes); shift; continue ;;
            --role=* | --livekit-url=* | --livekit-api-key=* | --livekit-api-secret-file=* | --livekit-server-bin=* | \
                --node-ip=* | --domain=*)
                value=${opt#*=} opt=${opt%%=*} ;;
            --role | --livekit-url | --livekit-api-key | --livekit-api-secret-file | --livekit-server-bin | \
                --node-ip | --domain)
                (($# >= 2)) || die "$opt needs a value (see ./install.sh --help)"
                value=$2
                shift ;;
            *) die "unknown option '$opt' (see ./install.sh --help)" ;;
        esac
        shift
        [[ -n $value ]] || die "$opt needs a non-empty value"
        case $opt in
            --role) role=$value ;;
            --livekit-url) livekit_url=$value ;;
            --livekit-api-key) api_key=$value ;;
            --livekit-api-secret-file) secret_file=$value; continue ;;
            --livekit-server-bin) server_bin=$value ;;
            --node-ip) node_ip=$value ;;
            --domain) domain=$value ;;
        esac
        handover+=("$opt" "$value")
    done
    case $role in
        "" | all | worker) ;;
        *) die "--role must be 'all' or 'worker', not '$role'" ;;
    esac
    if [[ -n $livekit_url && ! $livekit_url =~ ^(wss?|https?)://[^/[:space:]]+ ]]; then
        die "--livekit-url must be a ws://, wss://, http:// or https:// URL, not '$livekit_url'"
    fi
    if [[ -n $api_key$secret_file && -z $livekit_url ]]; then
        die "--livekit-api-key/--livekit-api-secret-file go with --livekit-url (a bundled LiveKit gets generated keys)"
    fi
    if [[ -n $livekit_url && (-z $api_key || -z $secret_file) ]]; then
        die "--livekit-url needs --livekit-api-key and --livekit-api-secret-file"
    fi
    if [[ -n $server_bin && -n $livekit_url ]]; then
        die "--livekit-server-bin bundles a LiveKit server, --livekit-url uses another one: pass one of them"
    fi
    if [[ $role == worker && -n $server_bin ]]; then
        die "--livekit-server-bin: a worker-role box runs no LiveKit server (it joins --livekit-url)"
    fi
    if [[ -n $server_bin ]]; then
        [[ -f $server_bin && -x $server_bin ]] || die "--livekit-server-bin $server_bin is not an executable file"
        livekit_version "$server_bin" >/dev/null ||
            die "--livekit-server-bin $server_bin is not a livekit-server (its --version says otherwise)"
    fi
    if [[ -n $node_ip ]] && ! valid_ip "$node_ip"; then
        die "--node-ip must be an IPv4 or IPv6 address, not '$node_ip'"
    fi
    if [[ -n $domain && ! $domain =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$ ]]; then
        die "--domain must be a DNS name such as agents.example.com, not '$domain'"
    fi
}

valid_ip() {
    local ip=$1 part
    if [[ $ip =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]]; then
        for part in "${BASH_REMATCH[@]:1}"; do ((10#$part <= 255)) || return 1; done
        return 0
    fi
    [[ $ip == *:* && $ip =~ ^[0-9A-Fa-f:.]+$ ]]
}

# The API secret, read once before anything changes (a pipe or standard input can be read only once); it reaches
# `appliance install` on descriptor 3, never in an argument or the environment of a process.
api_secret=""
read_secret() {
    [[ -n $secret_file ]] || return 0
    local where="standard input"
    if [[ $secret_file == - ]]; then
        IFS= read -r -d '' api_secret || true
    else
        where=$secret_file
        [[ -r $secret_file && ! -d $secret_file ]] || die "--livekit-api-secret-file $secret_file: not a readable file"
        IFS= read -r -d '' api_secret <"$secret_file" || true
    fi
    api_secret=${api_secret%$'\n'}
    [[ -n $api_secret ]] || die "--livekit-api-secret-file: $where is empty (it must hold the LiveKit API secret)"
    handover+=(--livekit-api-secret-file /dev/fd/3)
}

# "1.9.11" for a livekit-server binary, else failure.
livekit_version() {
    local out
    out=$("$1" --version 2>/dev/null) || return 1
    [[ $out =~ ^livekit-server\ version\ ([0-9][0-9A-Za-z.+-]*) ]] || return 1
    echo "${BASH_REMATCH[1]}"
}

# ---- output -----------------------------------------------------------------------------------------------------

log_file=""
start_log() {
    mkdir -p "$LOG_DIR"
    chmod 0750 "$LOG_DIR"
    log_file=$LOG_DIR/install-$(date -u +%Y%m%dT%H%M%SZ).log
    (umask 077 && : >>"$log_file")
    # Both streams reach the terminal as before and the log as well.
    exec > >(tee -a "$log_file") 2> >(tee -a "$log_file" >&2)
    step log "$log_file"
}

on_error() {
    local rc=$1 line=$2 command=$3 last=""
    # The main shell only: a failure in a command substitution or a subshell reaches it as that command's status
    # (and is reported once, here) or is handled there; reporting it in the subshell too would say "failed" for
    # a run that goes on.
    ((BASHPID == $$)) || return 0
    # Read before anything below reaches the log through tee.
    if [[ -n $log_file ]]; then
        last=$(grep -v '^[[:space:]]*$' "$log_file" | tail -n 6 | sed 's/^/  | /')
    fi
    echo "error: install.sh failed (exit $rc) at line $line: $command" >&2
    if [[ -n $last ]]; then
        echo "error: the log ends with:" >&2
        echo "$last" >&2
    fi
    echo "error: fix the cause and re-run ./install.sh: it checks every step again and resumes where it stopped${log_file:+ (log: $log_file)}" >&2
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR

step() {
    printf 'install.sh: %-22s %s\n' "$1" "$2"
}

warn() {
    echo "warning: $*" >&2
}

# ---- facts about the box ----------------------------------------------------------------------------------------

systemd_running() {
    [[ -d /run/systemd/system ]]
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

# The installed version of a package, else the version apt would install, else nothing.
pkg_version() {
    if pkg_installed "$1"; then
        dpkg-query -W -f='${Version}' "$1"
    else
        apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
    fi
}

# "5:7.0.15-1~deb12u4" -> "7.0.15": no epoch (it would compare greater than any plain version), no revision.
upstream_version() {
    local v=${1#*:}
    v=${v%%-*}
    echo "${v%%[~+]*}"
}

version_ge() {
    dpkg --compare-versions "$1" ge "$2"
}

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        pkg_installed "$pkg" || echo "$pkg"
    done
}

# The installed appliance's settings as section.key=value lines, or the repository's defaults before the first
# install. Only scalar values; secrets are masked by `config show`.
declare -A conf=()
installed=0
read_settings() {
    local lines=""
    if [[ -x $VENV/bin/appliance ]] && lines=$("$VENV/bin/appliance" config show --json 2>/dev/null |
        "$VENV/bin/python" -c '
import json, sys
for section, table in json.load(sys.stdin).items():
    if isinstance(table, dict):
        for key, value in table.items():
            if not isinstance(value, (dict, list)):
                print(f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}")
' 2>/dev/null) && [[ -n $lines ]]; then
        installed=1
    else
        # The defaults, then a config written before the first install (later lines win).
        local config=${APPLIANCE_CONFIG:-/etc/appliance/appliance.toml} files=("$src/config/appliance.toml")
        if [[ -r $config ]]; then files+=("$config"); fi
        lines=$(awk '
            FNR == 1 { section = "" }
            /^\[[a-z_]+\]/ { section = substr($1, 2, length($1) - 2); next }
            /^[a-z_]+ *= */ && section != "" {
                key = $1; value = $0; sub(/^[^=]*= */, "", value); gsub(/"/, "", value); sub(/ *#.*/, "", value)
                print section "." key "=" value
            }' "${files[@]}")
    fi
    local line
    while IFS= read -r line; do
        if [[ -n $line ]]; then conf[${line%%=*}]=${line#*=}; fi
    done <<<"$lines"
}

# Whether the appliance bundles a livekit-server: role all, no external URL, and not switched off at install.
bundles_livekit() {
    local effective_role=${role:-${conf[control.role]:-all}}
    [[ $effective_role == all && -z $livekit_url ]] || return 1
    [[ -n $server_bin || $installed == 0 || ${conf[livekit_server.enabled]:-true} == true ]]
}

# "tcp 6479" lines: the ports this appliance listens on, from its settings.
our_ports() {
    local effective_role=${role:-${conf[control.role]:-all}}
    if [[ $effective_role == all ]]; then
        echo "tcp ${conf[redis.port]:-6479}"
        echo "tcp ${conf[postgres.port]:-5532}"
    fi
    echo "tcp ${conf[worker.health_port]:-8081}"
    echo "tcp ${conf[worker.status_port]:-8082}"
    echo "tcp ${conf[control.alt_health_port]:-8083}"
    echo "tcp ${conf[control.alt_status_port]:-8084}"
    if bundles_livekit; then
        echo "tcp ${conf[livekit_server.port]:-7880}"
        local rtc_tcp=${conf[livekit_server.rtc_tcp_port]:-7881}
        [[ $rtc_tcp == 0 ]] || echo "tcp $rtc_tcp"
        echo "udp ${conf[livekit_server.rtc_udp_port]:-7882}"
    fi
}

# A process of our own appliance: run by its user, or from its directory (supervisord runs as root without systemd).
ours() {
    local pid=$1 uid cmdline
    uid=$(stat -c %u "/proc/$pid" 2>/dev/null) || return 1
    [[ -n $appliance_uid && $uid == "$appliance_uid" ]] && return 0
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$APPLIANCE_HOME/"* ]]
}

# One line per port of ours that something else holds.
port_conflicts() {
    command -v ss >/dev/null || {
        warn "ss not found (iproute2): the appliance's ports were not checked"
        return 0
    }
    appliance_uid=$(id -u "${conf[control.user]:-appliance}" 2>/dev/null || true)
    local listening proto port line pids pid holder
    listening=$(ss -H -ltnup 2>/dev/null) || return 0
    while read -r proto port; do
        while IFS= read -r line; do
            [[ -n $line ]] || continue
            read -r -a fields <<<"$line"
            [[ ${fields[0]} == "$proto" && ${fields[4]##*:} == "$port" ]] || continue
            pids=$(grep -o 'pid=[0-9]*' <<<"$line" | cut -d= -f2 | sort -u || true)
            holder=""
            for pid in $pids; do
                ours "$pid" || holder="$(tr -d '\0' <"/proc/$pid/comm" 2>/dev/null || echo '?') (pid $pid)"
            done
            if [[ -z $pids ]]; then holder="an unknown process"; fi
            if [[ -n $holder ]]; then echo "$proto port $port is in use by $holder"; fi
        done <<<"$listening"
    done < <(our_ports)
    return 0
}

# ---- preflight: check everything, change nothing ----------------------------------------------------------------

problems=()
refuse() {
    problems+=("$*")
}

preflight() {
    # shellcheck disable=SC1091
    . /etc/os-release
    case "${ID:-}:${VERSION_ID:-}" in
        debian:12) ;;
        ubuntu:24.04) warn "Ubuntu 24.04 is supported on a best-effort basis (Debian 12 is the tested system)" ;;
        *) refuse "this is ${PRETTY_NAME:-an unknown system}: the appliance installs on Debian 12 (tested) or Ubuntu 24.04" ;;
    esac

    local arch
    arch=$(dpkg --print-architecture)
    case $arch in
        amd64 | arm64) ;;
        *) refuse "architecture $arch is not supported: amd64 or arm64" ;;
    esac

    local cpus ram_mib disk_mib
    cpus=$(nproc)
    ram_mib=$(($(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo) / 1024))
    disk_mib=$(df -Pm "$(existing_parent "$APPLIANCE_HOME")" "$(existing_parent "$STATE_FILE")" |
        awk 'NR > 1 { print $4 }' | sort -n | head -1)
    if ((cpus < MIN_CPUS)); then
        refuse "$cpus vCPU: the appliance needs at least $MIN_CPUS"
    elif ((cpus < GOOD_CPUS)); then
        warn "$cpus vCPU: fine for a trial; the appliance is sized for $GOOD_CPUS"
    fi
    if ((ram_mib < MIN_RAM_MIB)); then
        refuse "$ram_mib MiB of RAM: the appliance needs at least 4 GB"
    elif ((ram_mib < GOOD_RAM_MIB)); then
        warn "$((ram_mib / 1024)) GiB of RAM: fine for a trial; the appliance is sized for 32 GB"
    fi
    if ((disk_mib < MIN_DISK_MIB)); then
        refuse "$disk_mib MiB free under /opt or /var: the appliance needs at least 3 GB"
    elif ((disk_mib < GOOD_DISK_MIB)); then
        warn "$((disk_mib / 1024)) GiB free under /opt or /var: conversations and logs will want more (20 GB+)"
    fi

    # Versions: what is installed, else what apt would install (after refreshing its lists if anything is missing).
    mapfile -t to_install < <(missing_packages)
    if ((${#to_install[@]})); then
        step apt-lists "refreshing (to install: ${to_install[*]})"
        apt-get update -qq >>"$log_file" 2>&1 ||
            die "apt-get update failed (see $log_file): this box must reach its package mirror to install ${to_install[*]}"
    fi
    local python_v redis_v
    python_v=$(pkg_version python3)
    redis_v=$(pkg_version redis-server)
    if [[ -z $python_v ]]; then
        refuse "no python3 package available from apt: check /etc/apt/sources.list"
    elif ! version_ge "$(upstream_version "$python_v")" "$MIN_PYTHON"; then
        refuse "Python $(upstream_version "$python_v") is too old: the appliance needs Python >= $MIN_PYTHON (Debian 12 or Ubuntu 24.04)"
    fi
    if [[ -z $redis_v ]]; then
        refuse "no redis-server package available from apt: check /etc/apt/sources.list"
    elif ! version_ge "$(upstream_version "$redis_v")" "$MIN_REDIS"; then
        refuse "Redis $(upstream_version "$redis_v") is too old: the appliance needs Redis >= $MIN_REDIS (Debian 12 or Ubuntu 24.04)"
    fi

    local conflict
    while IFS= read -r conflict; do
        if [[ -n $conflict ]]; then refuse "$conflict: free it, or change that port in /etc/appliance/appliance.toml"; fi
    done < <(port_conflicts)

    livekit_source=""
    if bundles_livekit; then
        choose_livekit_source "$arch"
    fi

    if ((${#problems[@]})); then
        local problem
        for problem in "${problems[@]}"; do echo "error: $problem" >&2; done
        echo "error: preflight failed: nothing was changed" >&2
        exit 1
    fi
    step preflight "ok ($cpus vCPU, $((ram_mib / 1024)) GiB RAM, $((disk_mib / 1024)) GiB free; Python $(upstream_version "$python_v"), Redis $(upstream_version "$redis_v"))"
}

existing_parent() {
    local path=$1
    while [[ ! -e $path ]]; do path=$(dirname "$path"); done
    echo "$path"
}

# Where the bundled livekit-server comes from: the given binary, the one already installed, Go, or the release.
livekit_target=""
choose_livekit_source() {
    local arch=$1 version
    livekit_target=${conf[livekit_server.bin]:-$APPLIANCE_HOME/bin/livekit-server}
    if [[ -n $server_bin ]]; then
        livekit_source="file"
    elif [[ -x $livekit_target ]] && version=$(livekit_version "$livekit_target"); then
        livekit_source=installed
        [[ $version == "$LIVEKIT_VERSION" ]] ||
            warn "keeping livekit-server $version at $livekit_target (this installer would bundle $LIVEKIT_VERSION)"
    elif command -v go >/dev/null; then
        livekit_source=go
    elif [[ -n ${LIVEKIT_SHA256[$arch]:-} ]] && timeout 5 bash -c ': >/dev/tcp/github.com/443' 2>/dev/null; then
        livekit_source=download
    else
        refuse "no livekit-server to bundle: pass --livekit-server-bin PATH (a livekit-server $LIVEKIT_VERSION binary), install Go >= 1.26 so it can be built, or use an existing LiveKit with --livekit-url"
    fi
}

# ---- changes, each an idempotent "ensure" -----------------------------------------------------------------------

# The first run's view of Debian's own Redis and PostgreSQL, kept across re-runs (later runs would see our changes).
record_state() {
    if [[ -f $STATE_FILE ]]; then
        return
    fi
    mkdir -p "$(dirname "$STATE_FILE")"
    local tmp=$STATE_FILE.tmp
    {
        echo "# Written by install.sh on its first run: the box before the appliance. \`appliance uninstall\` reads it."
        echo "APPLIANCE_HOME=$APPLIANCE_HOME"
        echo "CONFIG_FILE=${APPLIANCE_CONFIG:-/etc/appliance/appliance.toml}"
        echo "INSTALLED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "CLI_LINK=$CLI_LINK"
        echo "CREATECLUSTER_CONF=$CREATECLUSTER_CONF"
        local unit package
        for unit in redis-server.service postgresql.service; do
            package=${unit%.service}
            echo "$(state_key "$unit")_PACKAGE=$(pkg_installed "$package" && echo installed || echo absent)"
            echo "$(state_key "$unit")_ENABLED=$(unit_enabled "$unit")"
            echo "$(state_key "$unit")_ACTIVE=$(unit_active "$unit")"
        done
        echo "PACKAGES_ADDED=\"\""
        echo "SERVICES_DISABLED=\"\""
    } >"$tmp"
    mv "$tmp" "$STATE_FILE"
    step state "recorded in $STATE_FILE"
}

state_key() {
    local key=${1%.service}
    key=${key//-/_}
    echo "${key^^}"
}

state_get() {
    sed -n "s/^$1=\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$STATE_FILE" | tail -1
}

# Appends words to a space-separated list in the state file.
state_add() {
    local key=$1 word current
    shift
    current=$(state_get "$key")
    for word in "$@"; do
        [[ " $current " == *" $word "* ]] || current="${current:+$current }$word"
    done
    sed -i "s|^$key=.*|$key=\"$current\"|" "$STATE_FILE"
}

# systemctl against the running systemd, or against the files when there is none (a container, a chroot).
sysctl() {
    if systemd_running; then
        systemctl "$@"
    else
        systemctl --root=/ "$@"
    fi
}

unit_enabled() {
    command -v systemctl >/dev/null || {
        echo unknown
        return
    }
    local state
    state=$(sysctl is-enabled "$1" 2>/dev/null) || true
    echo "${state:-absent}"
}

unit_active() {
    if systemd_running; then
        systemctl is-active "$1" 2>/dev/null || true
    else
        echo unknown
    fi
}

ensure_packages() {
    if ((${#to_install[@]} == 0)); then
        step packages "unchanged"
        return
    fi
    if [[ " ${to_install[*]} " == *" postgresql "* && ! -e $CREATECLUSTER_CONF ]]; then
        # Debian would create and start a "main" cluster on 5432; the appliance runs its own.
        mkdir -p "$(dirname "$CREATECLUSTER_CONF")"
        printf '# Written by the appliance installer: no default cluster (the appliance runs its own).\ncreate_main_cluster = false\n' \
            >"$CREATECLUSTER_CONF"
    fi
    if [[ ! -e $POLICY_RC ]]; then
        # No package starts a service while we install it (invoke-rc.d and deb-systemd-invoke honour this).
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 0755 "$POLICY_RC"
        policy_rc_ours=1
    fi
    # Recorded first: after a failed apt run, a re-run sees some of them installed but they are still ours.
    state_add PACKAGES_ADDED "${to_install[@]}"
    step packages "installing ${to_install[*]} (apt output in the log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${to_install[@]}" >>"$log_file" 2>&1
    remove_policy_rc
    step packages "installed ${to_install[*]}"
}

policy_rc_ours=0
remove_policy_rc() {
    if ((policy_rc_ours)); then
        rm -f "$POLICY_RC"
        policy_rc_ours=0
    fi
}

# One directory for every temporary file, removed however the script ends.
scratch=""
cleanup() {
    remove_policy_rc
    if [[ -n $scratch ]]; then
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT

# Debian's redis-server and postgresql services that came with our packages stay off: the appliance runs its own.
ensure_debian_services_off() {
    command -v systemctl >/dev/null || return 0
    local unit changed=()
    for unit in redis-server.service postgresql.service; do
        [[ $(state_get "$(state_key "$unit")_PACKAGE") == absent ]] || continue
        if systemd_running && systemctl is-active -q "$unit"; then
            systemctl stop "$unit"
            changed+=("stopped $unit")
        fi
        if [[ $(unit_enabled "$unit") == enabled ]]; then
            sysctl disable -q "$unit" >>"$log_file" 2>&1
            changed+=("disabled $unit")
        fi
        state_add SERVICES_DISABLED "$unit"
    done
    if ((${#changed[@]})); then
        local joined
        joined=$(printf '%s, ' "${changed[@]}")
        step debian-services "${joined%, }"
    else
        step debian-services "unchanged"
    fi
}

ensure_venv() {
    local want have=""
    want=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ -x $VENV/bin/python ]]; then
        have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
    fi
    if [[ $have == "$want" ]]; then
        step venv "unchanged ($VENV, Python $have)"
        return
    fi
    # A venv of another Python (after a distribution upgrade) cannot be repaired in place.
    rm -rf "$VENV"
    mkdir -p "$APPLIANCE_HOME"
    chmod 0755 "$APPLIANCE_HOME"
    /usr/bin/python3 -m venv "$VENV"
    step venv "created $VENV (Python $want)"
}

# The project, from a copy of this checkout, reinstalled only when that copy differs from the installed one.
ensure_project() {
    local work archive digest
    work=$scratch/project
    mkdir "$work"
    archive=$work/source.tar
    # A deterministic archive of what the package is built from: its digest says whether anything changed.
    tar -C "$src" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u+rw,go+r,go-w \
        --exclude-vcs --exclude=./.venv --exclude=./venv --exclude=./build --exclude=./dist --exclude=./tests \
        --exclude=./bench --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.pyc' --exclude=.mypy_cache \
        --exclude=.ruff_cache --exclude=.pytest_cache -cf "$archive" .
    digest=$(sha256sum "$archive" | cut -d' ' -f1)
    if [[ $(cat "$APPLIANCE_HOME/source.sha256" 2>/dev/null) == "$digest" ]] &&
        "$VENV/bin/python" -c 'import appliance.cli, agent.worker' 2>/dev/null; then
        rm -rf "$work"
        step project "unchanged (${digest:0:12})"
        return
    fi
    mkdir "$work/src"
    tar -C "$work/src" -xf "$archive"
    step project "installing into $VENV (pip output in the log)"
    # Exactly the locked packages, each checked against its hash (requirements/appliance.txt, from uv.lock); then
    # the project itself, built with the locked setuptools.
    "$VENV/bin/python" -m pip install --no-input --disable-pip-version-check --no-warn-script-location \
        --require-hashes --no-deps -r "$work/src/requirements/appliance.txt" >>"$log_file" 2>&1
    "$VENV/bin/python" -m pip install --no-input --disable-pip-version-check --no-warn-script-location \
        --no-deps --no-build-isolation --upgrade "$work/src" >>"$log_file" 2>&1
    echo "$digest" >"$APPLIANCE_HOME/source.sha256"
    rm -rf "$work"
    step project "installed (${digest:0:12})"
}

# `appliance` on root's PATH.
ensure_cli_link() {
    if [[ $(readlink "$CLI_LINK" 2>/dev/null) == "$VENV/bin/appliance" ]]; then
        step command "unchanged ($CLI_LINK)"
        return
    fi
    if [[ -e $CLI_LINK && ! -L $CLI_LINK ]]; then
        warn "$CLI_LINK exists and is not our link: left alone (run $VENV/bin/appliance)"
        return
    fi
    mkdir -p "$(dirname "$CLI_LINK")"
    ln -sfn "$VENV/bin/appliance" "$CLI_LINK"
    step command "linked $CLI_LINK"
}

ensure_livekit() {
    case $livekit_source in
        "") return ;;
        installed)
            step livekit-server "unchanged ($livekit_target, $(livekit_version "$livekit_target"))"
            return ;;
        file)
            if cmp -s "$server_bin" "$livekit_target"; then
                step livekit-server "unchanged ($livekit_target, $(livekit_version "$livekit_target"))"
                return
            fi
            install_binary "$server_bin" ;;
        go)
            local gobin
            gobin=$scratch/gobin
            step livekit-server "building $LIVEKIT_VERSION with Go (a few minutes the first time)"
            "$src/scripts/build-livekit-server" "$gobin/server" >>"$log_file" 2>&1 ||
                die "building livekit-server $LIVEKIT_VERSION with Go failed (see $log_file): pass --livekit-server-bin PATH instead"
            install_binary "$gobin/server"
            rm -rf "$gobin" ;;
        download)
            download_livekit ;;
    esac
    step livekit-server "installed $livekit_target ($(livekit_version "$livekit_target"))"
}

install_binary() {
    mkdir -p "$(dirname "$livekit_target")"
    install -m 0755 "$1" "$livekit_target.new"
    mv -f "$livekit_target.new" "$livekit_target"
}

download_livekit() {
    local arch want work url
    arch=$(dpkg --print-architecture)
    want=${LIVEKIT_SHA256[$arch]}
    work=$scratch/download
    mkdir "$work"
    url="https://github.com/livekit/livekit/releases/download/v$LIVEKIT_VERSION/livekit_${LIVEKIT_VERSION}_linux_$arch.tar.gz"
    step livekit-server "downloading $url"
    /usr/bin/python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "$url" "$work/livekit.tar.gz" >>"$log_file" 2>&1 ||
        die "downloading livekit-server failed (see $log_file): pass --livekit-server-bin PATH instead"
    [[ $(sha256sum "$work/livekit.tar.gz" | cut -d' ' -f1) == "$want" ]] ||
        die "the downloaded $url does not have the pinned sha256 $want: not installed"
    tar -C "$work" -xzf "$work/livekit.tar.gz" livekit-server
    install_binary "$work/livekit-server"
    rm -rf "$work"
}

confirm() {
    ((yes)) && return
    [[ -t 0 ]] || die "not a terminal: pass --yes to install without asking"
    local plan=() answer
    ((${#to_install[@]})) && plan+=("install Debian packages: ${to_install[*]}")
    [[ -x $VENV/bin/appliance ]] || plan+=("create $VENV with the appliance")
    case $livekit_source in
        file | go | download) plan+=("put livekit-server at $livekit_target ($livekit_source)") ;;
    esac
    ((${#plan[@]})) || return 0
    echo "install.sh will:"
    printf '  - %s\n' "${plan[@]}"
    read -r -p "Continue? [y/N] " answer
    [[ $answer == [yY]* ]] || die "cancelled: nothing was changed"
}

main() {
    parse_options "$@"
    [[ $EUID -eq 0 ]] || die "run as root (or with sudo): ./install.sh (options as before)"
    src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    [[ -f $src/pyproject.toml && -d $src/appliance ]] || die "$src is not the appliance's checkout"
    read_secret
    start_log
    scratch=$(mktemp -d)
    local started=$SECONDS
    read_settings
    preflight
    confirm
    record_state
    ensure_packages
    ensure_debian_services_off
    ensure_venv
    ensure_project
    ensure_cli_link
    ensure_livekit
    step handover "done in $((SECONDS - started)) s: appliance install takes over"
    cleanup
    trap - ERR EXIT
    if [[ -n $api_secret ]]; then
        exec 3<<<"$api_secret"
    fi
    exec "$VENV/bin/appliance" install "${handover[@]}"
}

main "$@"
