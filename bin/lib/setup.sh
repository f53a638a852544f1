# Shared setup for bin/ commands: Debian packages and the Python venv (.venv).
# Source it; it defines functions only.

lorikeet_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Installs the Debian packages Lorikeet needs when any is missing.
lorikeet_install_debian_packages() {
    local wanted=(libuv1-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-venv wrk etcd-server)
    local missing=()
    for package in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if ((${#missing[@]})); then
        echo "== installing Debian packages: ${missing[*]}"
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Creates .venv with the fixture/reference packages when missing or outdated.
lorikeet_python_venv() {
    local venv="$lorikeet_root/.venv"
    local requirements="$lorikeet_root/Tests/Fixtures/requirements.txt"
    local stamp="$venv/.requirements"
    if [[ -x "$venv/bin/python" ]] && cmp -s "$requirements" "$stamp"; then return; fi
    echo "== preparing Python venv (.venv) for test fixtures"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
}
