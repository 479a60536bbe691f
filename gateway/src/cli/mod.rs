//! Command-line tools of the `berrygw` binary that do their work in-process
//! (the daemon's clients over the local API are in `status::cli`). They sit
//! above everything else: they load the configuration and use the modules it
//! configures, and nothing imports them but `main.rs`.

pub mod decode;
