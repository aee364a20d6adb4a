//! Model-based check of the store under injected storage faults and crashes: see
//! `store_model.rs` (the operations and what is checked).

#![no_main]

#[path = "../store_model.rs"]
mod store_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| store_model::store_model(data));
