//! Forwarding targets: named-target resolution, address checks, TCP relays,
//! Kubernetes pod/service port-forwards and the Kubernetes API proxy.

pub mod kubeapi;
