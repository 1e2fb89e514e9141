#!/usr/bin/env bash
# Install what is missing, idempotently: Debian packages (as root, or through sudo), then a
# virtual environment .venv with the project, every optional part, and the exact Python packages the suite
# runs with (.ci/constraints.txt; pyproject.toml holds the ranges a user's environment may satisfy instead).
set -euo pipefail
cd "$(dirname "$0")/.."

# Open3D needs GL/EGL (Mesa software rendering works headless), OpenMP and libusb to import;
# xvfb is the legacy renderer's fallback where EGL is missing; Vulkan (Mesa) runs the filament
# renderer headless; make runs the README's commands; headless Chromium and its driver load the HTML
# report in its test (tests/eval/test_html_report.py).
APT_PACKAGES=(libgl1 libegl1 libgl1-mesa-dri libgomp1 libusb-1.0-0 xvfb libvulkan1 mesa-vulkan-drivers make
              chromium chromium-driver)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
# Reinstall only when the project's requirements (pyproject.toml) or the lock (.ci/constraints.txt) changed
# since the last install. Every extra: the suite tests each optional part (dask, HTML, scanners, object storage).
stamp=.venv/.pointad-installed
lock=.ci/constraints.txt
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (ranges in pyproject.toml, exact versions in $lock)"
  # (this machine's pip config lists local index folders that may not exist: drop those warnings; pipefail
  # keeps pip's own exit status)
  .venv/bin/python -m pip install -q --disable-pip-version-check -c "$lock" -e ".[dev,scale,html,scanners,cloud]" 2>&1 \
    | { grep -v "is ignored: it is neither" || true; }
  .venv/bin/python -c "import pointad.render, pointad.shared, open3d, zarr, torch, dask.distributed, plotly, laspy, pye57, s3fs, upath, moto" \
    || { echo "setup: install failed" >&2; exit 1; }
  touch "$stamp"
fi
