#!/usr/bin/env bash
# Set up Pollen on a fresh machine: a virtual environment in .venv with the package installed,
# and the Fashion-MNIST data the default job trains on.
#
#   bash scripts/setup.sh          # runtime (+ plots, scikit-learn data sets)
#   bash scripts/setup.sh --dev    # everything the tests need (opacus, tenseal, grpcio-tools, pytest, espeak-ng, ...)
#   bash scripts/setup.sh --speech # the speech example's extra (transformers, peft) and espeak-ng
#   bash scripts/setup.sh --no-data
#
# Environment: PYTHON (default python3.11 or python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="plot,tabular,metrics"
want_data=1
want_speech=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras="dev,all"; want_speech=1 ;;
    --speech) extras="$extras,speech"; want_speech=1 ;;
    --no-data) want_data=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --dev, --speech, --no-data)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
if [ -z "$PYTHON" ]; then
  echo "setup.sh: Python 3.11 is required; install it (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup.sh: $PYTHON is $("$PYTHON" -V 2>&1); Pollen needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV" || { echo "setup.sh: could not create a venv (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
echo "==> installing pollen[$extras] (torch pinned to the 2.13.0 CPU build)"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch is named in the same command as the package so that no extra can pull another torch build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0" -e ".[$extras]"

FMNIST=/usr/share/datasets/fashion-mnist
if [ "$want_data" = 1 ] && [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: Fashion-MNIST is missing. Install it with: sudo apt-get install dataset-fashion-mnist" >&2
    echo "          or download the four IDX files and pass --data-dir DIR to pollen." >&2
  else
    echo "setup.sh: this is not a Debian system, so Fashion-MNIST cannot be installed with apt." >&2
    echo "          Download train/t10k images and labels (IDX format) and pass --data-dir DIR to pollen." >&2
  fi
fi
# The speech example synthesises its spoken commands with espeak-ng (a Debian package, no download).
if [ "$want_speech" = 1 ] && ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing espeak-ng (Debian package) for the speech example"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "setup.sh: the speech example needs espeak-ng, which is missing. Install it with:" >&2
    echo "          sudo apt-get install espeak-ng   (Debian/Ubuntu; dnf install espeak-ng on Fedora, brew install espeak-ng on macOS)" >&2
  fi
fi
echo "==> ready: $VENV/bin/pollen --help"
