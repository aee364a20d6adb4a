//! `domsync generate man|completions DIR`: the manual pages and shell completions, made from
//! the clap definitions, for packaging (`packaging/build-deb`). Parsed apart from the other
//! subcommands, so that it appears in no help, manual page or completion.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clap_complete::Shell;

mod assets;

use assets::{completions, man_pages};

/// Manual pages and shell completions of domsync, for packaging.
#[derive(Parser)]
#[command(name = "domsync generate")]
struct GenerateArgs {
    #[command(subcommand)]
    cmd: GenerateCmd,
}

#[derive(Subcommand)]
enum GenerateCmd {
    /// Manual pages: domsync.1 and one page per subcommand (domsync-kv-put.1, ...).
    Man {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Shell completions: domsync.bash, _domsync (zsh), domsync.fish.
    Completions {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Only these shells (default: bash, zsh and fish).
        #[arg(long, value_enum)]
        shell: Vec<Shell>,
    },
}

/// When the command line is `domsync generate ...`: writes what it asks for the command line
/// definition `command()` builds (the `domsync` parser as users see it, options hidden where
/// they do not apply) and returns the exit code; `None` otherwise.
pub fn intercept_with(command: fn() -> clap::Command) -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != "generate" {
        return None;
    }
    let parsed =
        GenerateArgs::parse_from(std::iter::once(OsString::from("domsync generate")).chain(args));
    let files = match parsed.cmd {
        GenerateCmd::Man { dir } => man_pages(command(), "1", &dir),
        GenerateCmd::Completions { dir, shell } => completions(command(), &shell, &dir),
    };
    Some(match files {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("domsync: error: cannot generate: {e}");
            ExitCode::from(1)
        }
    })
}
