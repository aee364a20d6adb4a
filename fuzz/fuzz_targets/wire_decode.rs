//! Every wire message of every ALPN (replication, gateway, admin, application) on arbitrary bytes, framed as
//! on the wire: see `checks::wire`.

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::wire(data));
