//! Robustness tests for Flagstaff in the manner of Jepsen and etcd's robustness suite: real
//! `flagstaff` processes on their own loopback addresses, real faults (kill -9, SIGSTOP,
//! partitions through proxies the harness owns), recorded histories, and checkers that can say
//! no. See README.md.

pub mod check;
pub mod cluster;
pub mod disk_fault;
pub mod history;
pub mod load;
pub mod nemesis;
pub mod profiles;
pub mod proxy;
pub mod report;
pub mod run;
pub mod sdk;
pub mod workload;
