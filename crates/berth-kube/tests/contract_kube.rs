//! The Volumes contract suite on `KubeVolumes`, against the fake Kubernetes API server.

use berth_kube::fake::harness::KubeHarness;

berth_substrate::volumes_contract!(KubeHarness::start);
