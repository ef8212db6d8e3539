//! The configuration files of the node's parts: containerd, the CNI network
//! and the kubelet. Every path they name lives in the node's work folder,
//! except what the programs hard-code (see `host::FIXED_PATHS`).

use std::net::IpAddr;
use std::path::Path;

/// Pods get addresses here (inside the machine only: no route leaves it).
pub const POD_RANGE: &str = "10.244.0.0/24";
/// The bridge the pods' veths are attached to.
pub const BRIDGE: &str = "p12br0";
/// containerd's sandbox ("pause") image, built by `scripts/image pause`.
pub const PAUSE_IMAGE: &str = "localhost/p12-testenv/pause:1";

/// containerd 1.6 (config version 2). Two settings are needed on this kind of
/// machine: `restrict_oom_score_adj` (no CAP_SYS_RESOURCE in the VM, so the
/// sandboxes' `oom_score_adj -998` is refused and every sandbox fails) and
/// cgroupfs instead of systemd cgroups (cgroup v1, no systemd).
pub fn containerd(dir: &Path, socket: &Path, cni_conf_dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        socket = socket.display(),
        cni = cni_conf_dir.display(),
    )
}

/// A bridge network with host-local addresses. Pods get routes to the pod
/// range, the Service range and the node's own address (where the API server
/// listens), nothing else: pod traffic never leaves the machine. No
/// masquerading, so the CNI plugins add no iptables rules of their own.
pub fn cni(dir: &Path, service_range: &str, node_ip: IpAddr) -> String {
    format!(
        r#"{{
  "cniVersion": "0.4.0",
  "name": "p12-testenv",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{ "subnet": "{POD_RANGE}" }}]],
        "routes": [
          {{ "dst": "{service_range}" }},
          {{ "dst": "{node_ip}/32" }}
        ],
        "dataDir": "{ipam}"
      }}
    }}
  ]
}}
"#,
        ipam = dir.join("cni/ipam").display(),
    )
}

pub struct Kubelet<'a> {
    pub node_ip: IpAddr,
    pub port: u16,
    pub runtime_socket: &'a Path,
    pub client_ca: &'a Path,
}

/// The kubelet on cgroup v1 (`failCgroupV1: false`, cgroupfs), authenticating
/// the API server by client certificate and asking it (webhook) who may do
/// what. Secret volumes are refreshed every 5 s (`syncFrequency`), as a user
/// waiting for a renewed keystore would want from a test; images are never
/// garbage-collected (nothing could pull them back).
pub fn kubelet(k: &Kubelet) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
address: {ip}
port: {port}
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
syncFrequency: 5s
staticPodPath: ""
podCIDR: {POD_RANGE}
clusterDomain: cluster.local
resolvConf: {resolv}
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
serializeImagePulls: false
"#,
        socket = k.runtime_socket.display(),
        ip = k.node_ip,
        port = k.port,
        // Pods get the machine's resolver settings when it has any.
        resolv = if std::path::Path::new("/etc/resolv.conf").exists() {
            "/etc/resolv.conf"
        } else {
            "\"\""
        },
        ca = k.client_ca.display(),
    )
}
