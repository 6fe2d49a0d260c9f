//! `keel-chaos`: a Jepsen-style fault harness. Real clusters of `keel serve` processes, each in
//! its own network namespace, run concurrent clients while a seeded schedule injects faults;
//! the recorded history is then checked. See `docs/reliability.md`.

pub mod check;
pub mod cluster;
pub mod corrupt;
pub mod elle;
pub mod history;
pub mod linear;
pub mod nemesis;
pub mod net;
pub mod proxy;
pub mod resources;
pub mod run;
pub mod workload;
