//! `iotallyctl`: reads, resets and exports the tallies of the iotally minifilter through its
//! communication port `\iotally`.
//!
//! The same client code runs over any [`transport::Transport`]: `FilterConnectCommunicationPort`
//! / `FilterSendMessage` on Windows (module `windows`), fltsim's port with feature `sim` (module
//! `sim`), which the tests and the demo use.

pub mod cli;
pub mod client;
pub mod rate;
pub mod render;
#[cfg(feature = "sim")]
pub mod sim;
pub mod transport;
#[cfg(windows)]
pub mod windows;
