//! `lanrage-tests` holds LANrage's end-to-end tests (`tests/`) and the small
//! lab they share: a real relay process on loopback with its metrics, and test
//! peers that speak the real protocol with real boringtun tunnels over real UDP
//! sockets. Nothing here mocks the code under test.
//!
//! Every loop in this crate is bounded in count and time, and traffic goes only
//! to loopback addresses or between network namespaces the tests create
//! ([`netns`], deleted on drop).

pub mod client_process;
pub mod delay;
pub mod gamesim;
pub mod gate;
pub mod mmsg;
pub mod natlab;
pub mod netns;
pub mod party_lab;
pub mod peer;
pub mod relay_process;
pub mod session;
pub mod spoof;

pub use gate::Backend;
pub use peer::{Incoming, TestPeer};
pub use relay_process::{RelayProcess, RelaySetup};
