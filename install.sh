#!/usr/bin/env bash
# Installs the LiveKit agent appliance on this machine (Debian 12; Ubuntu 24.04 best effort). A bootstrap: it
# checks what must hold before anything changes, installs python3 and python3-venv, makes the venv
# /opt/appliance/venv from this checkout (a copy, with the locked packages), then hands over to
# `appliance install --host`, which sets up the rest of the box (Debian packages without Debian's own Redis and
# PostgreSQL instances, the install-state file `appliance uninstall` reads, livekit-server) and the appliance.
# Each step is skipped when already done: re-running is quick, changes nothing, and is also the upgrade.
# Everything printed is also written to /var/log/appliance/install-<time>.log.
set -eEuo pipefail

readonly VENV=/opt/appliance/venv
readonly LOG_DIR=/var/log/appliance
# What this script installs itself. Before its first change it lists the packages the box has, from which
# appliance.host records what the installer added (in /var/lib/appliance/install-state.env).
readonly BOOTSTRAP_PACKAGES=(python3 python3-venv)
readonly STATE_FILE=/var/lib/appliance/install-state.env PACKAGES_BEFORE=/var/lib/appliance/packages-before
readonly MIN_PYTHON=3.11 MIN_REDIS=7.0
# The documented minimum (refused below) and the size the appliance is built for (warned below). MemTotal of a
# "4 GB" VM is ~3.8 GiB and of a "32 GB" one ~31 GiB, hence the MiB figures.
readonly MIN_CPUS=2 MIN_RAM_MIB=3500 MIN_DISK_MIB=3072
readonly GOOD_CPUS=16 GOOD_RAM_MIB=30000 GOOD_DISK_MIB=20480

usage() {
    cat <<'EOF'
Usage: ./install.sh [OPTIONS]        (as root, or with sudo)

Installs the LiveKit agent appliance and starts it; safe to re-run (that is also the upgrade).

Options (passed through to `appliance install`, which checks their values):
  --role all|worker            all (default): Redis, PostgreSQL, LiveKit and the agents on this box;
                               worker: the agents only, pointed at a shared LiveKit, Redis and PostgreSQL
  --redis-url URL              a shared Redis: redis[s]://[user@]host:port[/db] (rediss: TLS); no password in it
  --redis-password-file FILE   a file holding its password
  --redis-ca-file FILE         the CA its TLS certificate is checked against (default: the system's)
  --postgres-dsn DSN           a shared PostgreSQL, a libpq DSN without password (e.g. "host=db.example
                               dbname=appliance user=appliance sslmode=verify-full sslrootcert=/etc/ca.pem")
  --postgres-password-file FILE
                               a file holding its password
  --livekit-url URL            use this LiveKit server (ws[s]:// or http[s]://) instead of a bundled one
  --livekit-api-key KEY        its API key (with --livekit-url)
  --livekit-api-secret-file FILE
                               a file holding its API secret, '-' for standard input (with --livekit-url;
                               one trailing newline is dropped); never on the command line
  --livekit-server-bin PATH    the livekit-server binary to bundle (else: the installed one, or built with Go)
  --livekit-client-tgz PATH    livekit-client's npm tarball for the web console (else: downloaded from the npm
                               registry); either way checked against config/livekit-client.lock
  --node-ip IP                 the address clients reach the bundled LiveKit at
  --domain NAME                the public name clients use (TLS terminated in front, see README)
  --yes                        do not ask; install non-interactively
  -h, --help                   this help

Requirements: root; Debian 12 (tested) or Ubuntu 24.04 (best effort); amd64 or arm64; Python >= 3.11 and
Redis >= 7.0 from the distribution; at least 2 vCPU, 4 GB RAM and 3 GB free disk (built for 16 vCPU and 32 GB:
less is warned about); the appliance's ports free.
EOF
}

die() { # a user's error: one line, no trap message (nothing has failed, nothing to resume)
    echo "error: $*" >&2
    exit 1
}
step() { printf 'install.sh: %-22s %s\n' "$1" "$2"; }
warn() { echo "warning: $*" >&2; }

# ---- options: known names with a value each; `appliance install` checks the values -----------------------------

yes=0 secret_file="" handover=(--host)
parse_options() {
    local opt value
    while (($#)); do
        opt=$1 value=""
        case $opt in
            -h | --help) usage; exit 0 ;;
            --yes) yes=1; handover+=(--yes); shift; continue ;;
            --role=* | --livekit-url=* | --livekit-api-key=* | --livekit-api-secret-file=* | --livekit-server-bin=* | \
                --livekit-client-tgz=* | --node-ip=* | --domain=* | --redis-url=* | --redis-password-file=* | \
                --redis-ca-file=* | --postgres-dsn=* | --postgres-password-file=*)
                value=${opt#*=} opt=${opt%%=*} ;;
            --role | --livekit-url | --livekit-api-key | --livekit-api-secret-file | --livekit-server-bin | \
                --livekit-client-tgz | --node-ip | --domain | --redis-url | --redis-password-file | --redis-ca-file | \
                --postgres-dsn | --postgres-password-file)
                (($# >= 2)) || die "$opt needs a value (see ./install.sh --help)"
                value=$2
                shift ;;
            *) die "unknown option '$opt' (see ./install.sh --help)" ;;
        esac
        shift
        [[ -n $value ]] || die "$opt needs a non-empty value"
        if [[ $opt == --livekit-api-secret-file ]]; then secret_file=$value; else handover+=("$opt" "$value"); fi
    done
}

# The API secret, read once before anything changes (standard input can be read only once); it reaches
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

# ---- output -------------------------------------------------------------------------------------------------------

log_file=""
start_log() {
    mkdir -p "$LOG_DIR"
    chmod 0750 "$LOG_DIR"
    log_file=$LOG_DIR/install-$(date -u +%Y%m%dT%H%M%SZ).log
    (umask 077 && : >>"$log_file")
    exec > >(tee -a "$log_file") 2> >(tee -a "$log_file" >&2) # the terminal as before, and the log
    step log "$log_file"
}

on_error() {
    local rc=$1 line=$2 command=$3 last=""
    # The main shell only: a failure in a command substitution reaches it as that command's status.
    ((BASHPID == $$)) || return 0
    [[ -z $log_file ]] || last=$(grep -v '^[[:space:]]*$' "$log_file" | tail -n 6 | sed 's/^/  | /')
    echo "error: install.sh failed (exit $rc) at line $line: $command" >&2
    [[ -z $last ]] || printf 'error: the log ends with:\n%s\n' "$last" >&2
    echo "error: fix the cause and re-run ./install.sh: it checks every step again and resumes where it stopped${log_file:+ (log: $log_file)}" >&2
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR

# ---- preflight: check what must hold, change nothing ---------------------------------------------------------------

installed() { [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]; }

# The upstream version installed, else the one apt would install: "5:7.0.15-1~deb12u4" -> "7.0.15".
version_of() {
    local v
    if installed "$1"; then
        v=$(dpkg-query -W -f='${Version}' "$1")
    else
        v=$(apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }')
    fi
    v=${v#*:} v=${v%%-*}
    echo "${v%%[~+]*}"
}

problems=()
preflight() {
    . /etc/os-release
    case "${ID:-}:${VERSION_ID:-}" in
        debian:12) ;;
        ubuntu:24.04) warn "Ubuntu 24.04 is supported on a best-effort basis (Debian 12 is the tested system)" ;;
        *) problems+=("this is ${PRETTY_NAME:-an unknown system}: the appliance installs on Debian 12 (tested) or Ubuntu 24.04") ;;
    esac
    local arch cpus ram_mib disk_mib
    arch=$(dpkg --print-architecture)
    [[ $arch == amd64 || $arch == arm64 ]] || problems+=("architecture $arch is not supported: amd64 or arm64")
    cpus=$(nproc)
    ram_mib=$(($(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo) / 1024))
    disk_mib=$(df -Pm /opt /var | awk 'NR > 1 { print $4 }' | sort -n | head -1)
    if ((cpus < MIN_CPUS)); then problems+=("$cpus vCPU: the appliance needs at least $MIN_CPUS")
    elif ((cpus < GOOD_CPUS)); then warn "$cpus vCPU: fine for a trial; the appliance is sized for $GOOD_CPUS"; fi
    if ((ram_mib < MIN_RAM_MIB)); then problems+=("$ram_mib MiB of RAM: the appliance needs at least 4 GB")
    elif ((ram_mib < GOOD_RAM_MIB)); then warn "$((ram_mib / 1024)) GiB of RAM: fine for a trial; the appliance is sized for 32 GB"; fi
    if ((disk_mib < MIN_DISK_MIB)); then problems+=("$disk_mib MiB free under /opt or /var: the appliance needs at least 3 GB")
    elif ((disk_mib < GOOD_DISK_MIB)); then warn "$((disk_mib / 1024)) GiB free under /opt or /var: conversations and logs will want more (20 GB+)"; fi
    # apt's candidates: its lists refreshed first when something is to be installed.
    if ! installed python3 || ! installed python3-venv || ! installed redis-server; then
        step apt-lists "refreshing"
        apt-get update -qq >>"$log_file" 2>&1 || die "apt-get update failed (see $log_file): this box must reach its package mirror"
    fi
    local python_v redis_v
    python_v=$(version_of python3) redis_v=$(version_of redis-server)
    if [[ -z $python_v ]]; then problems+=("no python3 package available from apt: check /etc/apt/sources.list")
    elif ! dpkg --compare-versions "$python_v" ge "$MIN_PYTHON"; then problems+=("Python $python_v is too old: the appliance needs Python >= $MIN_PYTHON (Debian 12 or Ubuntu 24.04)"); fi
    if [[ -z $redis_v ]]; then problems+=("no redis-server package available from apt: check /etc/apt/sources.list")
    elif ! dpkg --compare-versions "$redis_v" ge "$MIN_REDIS"; then problems+=("Redis $redis_v is too old: the appliance needs Redis >= $MIN_REDIS (Debian 12 or Ubuntu 24.04)"); fi
    if ((${#problems[@]})); then
        printf 'error: %s\n' "${problems[@]}" >&2
        die "preflight failed: nothing was changed"
    fi
    step preflight "ok ($cpus vCPU, $((ram_mib / 1024)) GiB RAM, $((disk_mib / 1024)) GiB free; Python $python_v, Redis $redis_v)"
}

confirm() {
    ((yes)) && return
    [[ -t 0 ]] || die "not a terminal: pass --yes to install without asking"
    local answer
    echo "install.sh will install python3 and python3-venv if missing, the venv $VENV, then the appliance:"
    echo "Debian's redis-server and postgresql packages (their own services kept off), its user, configs and programs."
    read -r -p "Continue? [y/N] " answer
    [[ $answer == [yY]* ]] || die "cancelled: nothing was changed"
    handover+=(--yes)
}

# ---- changes, each idempotent ---------------------------------------------------------------------------------------

ensure_python() {
    local pkg missing=()
    for pkg in "${BOOTSTRAP_PACKAGES[@]}"; do installed "$pkg" || missing+=("$pkg"); done
    if ((${#missing[@]} == 0)); then
        step python "unchanged"
        return
    fi
    if [[ ! -e $STATE_FILE && ! -e $PACKAGES_BEFORE ]]; then
        mkdir -p "$(dirname "$PACKAGES_BEFORE")"
        dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" { print $2 }' >"$PACKAGES_BEFORE"
    fi
    step python "installing ${missing[*]} (apt output in the log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log_file" 2>&1
}

ensure_venv() {
    local want have=""
    want=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ ! -x $VENV/bin/python ]] || have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
    if [[ $have == "$want" ]]; then
        step venv "unchanged ($VENV, Python $have)"
        return
    fi
    rm -rf "$VENV" # a venv of another Python (after a distribution upgrade) cannot be repaired in place
    mkdir -p "$(dirname "$VENV")"
    chmod 0755 "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
    step venv "created $VENV (Python $want)"
}

# The project from a copy of this checkout, reinstalled only when that copy differs from the installed one.
ensure_project() {
    local work=$scratch/project archive digest pip=("$VENV/bin/python" -m pip install --no-input --disable-pip-version-check --no-warn-script-location)
    mkdir "$work"
    archive=$work/source.tar
    tar -C "$src" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u+rw,go+r,go-w \
        --exclude-vcs --exclude=./.venv --exclude=./venv --exclude=./build --exclude=./dist --exclude=./tests \
        --exclude=./bench --exclude=./harness --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.pyc' \
        --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache -cf "$archive" .
    digest=$(sha256sum "$archive" | cut -d' ' -f1)
    if [[ $(cat /opt/appliance/source.sha256 2>/dev/null) == "$digest" ]] && "$VENV/bin/python" -c 'import appliance.cli, agent.worker' 2>/dev/null; then
        step project "unchanged (${digest:0:12})"
        return
    fi
    mkdir "$work/src"
    tar -C "$work/src" -xf "$archive"
    step project "installing into $VENV (pip output in the log)"
    # Exactly the locked packages, each checked against its hash (requirements/appliance.txt, from uv.lock); then
    # the project itself, built with the locked setuptools.
    "${pip[@]}" --require-hashes --no-deps -r "$work/src/requirements/appliance.txt" >>"$log_file" 2>&1
    "${pip[@]}" --no-deps --no-build-isolation --upgrade "$work/src" >>"$log_file" 2>&1
    echo "$digest" >/opt/appliance/source.sha256
    step project "installed (${digest:0:12})"
}

scratch=""
trap '[[ -z $scratch ]] || rm -rf "$scratch"' EXIT

main() {
    parse_options "$@"
    [[ $EUID -eq 0 ]] || die "run as root (or with sudo): ./install.sh (options as before)"
    src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    [[ -f $src/pyproject.toml && -d $src/appliance ]] || die "$src is not the appliance's checkout"
    read_secret
    start_log
    scratch=$(mktemp -d)
    preflight
    confirm
    ensure_python
    ensure_venv
    ensure_project
    rm -rf "$scratch"
    trap - ERR EXIT
    [[ -z $api_secret ]] || exec 3<<<"$api_secret"
    step handover "done in ${SECONDS} s: appliance install sets up the box and the appliance"
    APPLIANCE_SOURCE=$src APPLIANCE_INSTALL_LOG=$log_file exec "$VENV/bin/appliance" install "${handover[@]}"
}

main "$@"
