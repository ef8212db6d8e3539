#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager),
# the node parts (kubelet, kube-scheduler, kube-proxy), kubectl and helm from the Go modules pinned in tests/k8s-tools/go.mod into
# target/k8s-tools/bin. Does nothing when they are already built for the pinned
# versions. With KUBEBUILDER_ASSETS set to a folder holding etcd, kube-apiserver
# and kube-controller-manager (what setup-envtest downloads), those are linked
# instead of built; kubectl and helm are still built unless that folder has them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out="${CARGO_TARGET_DIR:-$root/target}/k8s-tools/bin"
mkdir -p "$out"

die() { echo "k8s-tools: $*" >&2; exit 1; }
command -v go >/dev/null || die "go is not installed; install Go >= 1.26 (see README prerequisites)"

# Tool name -> Go package.
declare -A pkgs=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [helm]=helm.sh/helm/v4/cmd/helm
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
)

want=()
for tool in etcd kube-apiserver kube-controller-manager kubectl helm kubelet kube-scheduler kube-proxy; do
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$tool" ]; then
    ln -sf "$KUBEBUILDER_ASSETS/$tool" "$out/$tool"
  else
    want+=("$tool")
  fi
done
[ ${#want[@]} -gt 0 ] || { echo "k8s-tools: using binaries from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"; exit 0; }

# The stamp names the pinned versions (go.mod + go.sum), the Go version and the
# tool list; a matching stamp with every binary present means nothing to do.
stamp_file="$out/.stamp"
stamp=$( { cat "$here/go.mod" "$here/go.sum" "$here/build.sh"; go env GOVERSION; echo "${want[*]}"; } | sha256sum | cut -d" " -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  ok=1; for tool in "${want[@]}"; do [ -x "$out/$tool" ] || ok=0; done
  [ $ok = 1 ] && { echo "k8s-tools: up to date (${want[*]})"; exit 0; }
fi

echo "k8s-tools: building ${want[*]} (first build takes several minutes)"
start=$(date +%s)
cd "$here"
export GOFLAGS="-buildvcs=false"
# Under CI (a fresh machine) the Go build cache (about 4 GB for these tools) is
# of no later use: build into a temporary one and remove it afterwards. A
# GOCACHE you set yourself is used and kept.
if [ -n "${CI:-}" ] && [ -z "${GOCACHE:-}" ]; then
  GOCACHE=$(mktemp -d "${TMPDIR:-/tmp}/k8s-tools-gocache.XXXXXX")
  export GOCACHE
  trap 'chmod -R u+w "$GOCACHE" 2>/dev/null; rm -rf "$GOCACHE"' EXIT
fi
# Stamp the Kubernetes version into the binaries, as the release build does.
kver=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
kminor=$(echo "$kver" | cut -d. -f2)
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$kver -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$kminor -X $vpkg.gitTreeState=clean"
for tool in "${want[@]}"; do
  rm -f "$out/$tool"
  go build -trimpath -ldflags="$ldflags" -o "$out/$tool" "${pkgs[$tool]}" \
    || die "failed to build $tool from ${pkgs[$tool]} (see the go output above)"
done
echo "$stamp" > "$stamp_file"
echo "k8s-tools: built in $(( $(date +%s) - start ))s into $out"
