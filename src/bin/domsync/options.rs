//! Where the global options apply. `--data`/`--node` (the local store) and `--socket`,
//! `--remote`, `--admin-pki`, `--admin-id` (the daemon connection) are declared once, global,
//! each group under its own help heading, as are `--app-socket`, `--app-remote`, `--app-pki`,
//! `--app-id` (the application protocol, used by `kv` only); the help of a subcommand they do not apply to (`pki`,
//! `gateway`, `demo`, `doctor`, daemon-only or local-only commands) does not show them.

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::Cli;

/// Help heading of `--data` and `--node`.
pub const STORE: &str = "Local store";
/// Help heading of `--socket`, `--remote`, `--admin-pki` and `--admin-id`.
pub const DAEMON: &str = "Daemon connection";
/// Help heading of `--app-socket`, `--app-remote`, `--app-pki` and `--app-id`.
pub const APP: &str = "Application connection";

const STORE_ARGS: &[&str] = &["data", "node"];
const DAEMON_ARGS: &[&str] = &["socket", "remote", "admin_pki", "admin_id"];
const APP_ARGS: &[&str] = &["app_socket", "app_remote", "app_pki", "app_id"];

/// Which global options each top-level subcommand (and everything under it) does not use.
fn unused(subcommand: &str) -> Vec<&'static str> {
    // The application protocol serves only `kv`.
    let app = if subcommand == "kv" {
        &[][..]
    } else {
        APP_ARGS
    };
    [unused_admin(subcommand), app.to_vec()].concat()
}

fn unused_admin(subcommand: &str) -> Vec<&'static str> {
    match subcommand {
        // Their own files and addresses; none of the store or daemon options.
        "pki" | "gateway" | "demo" | "doctor" | "help" => [STORE_ARGS, DAEMON_ARGS].concat(),
        // Daemon only.
        "status" | "promote" | "switchover" | "collisions" | "plan" | "rebalance" => {
            STORE_ARGS.to_vec()
        }
        // Local only.
        "log" | "verify" => DAEMON_ARGS.to_vec(),
        _ => Vec::new(),
    }
}

/// `domsync domain create|list` are local, `domain add|remove` daemon only.
fn unused_in_domain(subcommand: &str) -> Vec<&'static str> {
    match subcommand {
        "add" | "remove" => STORE_ARGS.to_vec(),
        _ => DAEMON_ARGS.to_vec(),
    }
}

/// The `domsync` command with every global option hidden where it does not apply (for parsing,
/// help, man pages and completions alike).
pub fn command() -> clap::Command {
    let cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    let mut cmd = cmd;
    for name in names {
        let ids = unused(&name);
        let globals = globals.clone();
        cmd = cmd.mut_subcommand(&name, |sub| {
            let mut sub = hide(sub, &globals, &ids);
            if name == "domain" {
                let inner: Vec<String> = sub
                    .get_subcommands()
                    .map(|c| c.get_name().to_owned())
                    .collect();
                for n in inner {
                    let ids = unused_in_domain(&n);
                    sub = sub.mut_subcommand(&n, |c| hide(c, &globals, &ids));
                }
            }
            sub
        });
    }
    cmd
}

/// Parses the command line (exits with the usage on an error, as `Parser::parse` does).
pub fn parse() -> Cli {
    let mut cmd = command();
    let matches = cmd.get_matches_mut();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// Gives `cmd` hidden copies of the global options `ids`. Global options are copied into each
/// subcommand when the command is built, except where one of the same id is already there: the
/// hidden copy (global itself) is what `cmd` and everything under it get, and a value given
/// there still reaches the top-level options.
fn hide(cmd: clap::Command, globals: &[clap::Arg], ids: &[&str]) -> clap::Command {
    globals
        .iter()
        .filter(|a| ids.contains(&a.get_id().as_str()))
        .fold(cmd, |cmd, a| cmd.arg(a.clone().hide(true)))
}
