//! `lanrage-client`: the `lanrage` command on a gamer's PC. It wraps the
//! sans-IO engine (`lanrage-client-core`) in a platform driver (`driver`),
//! and adds the configuration file (`config`), the local control socket
//! that `lanrage status` talks to (`control`), and the CLI (`cli`).
//! `docs/client.md` is the user's guide.

pub mod cli;
pub mod config;
pub mod control;
pub mod driver;
