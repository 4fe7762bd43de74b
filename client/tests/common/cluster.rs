//! The shared harness (`test-cluster/`): real nodes on loopback behind link-cutting proxies.

// Not every test binary uses every item.
#[allow(unused_imports)]
pub use flagstaff_test_cluster::*;
