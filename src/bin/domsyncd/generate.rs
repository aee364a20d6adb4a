//! `domsyncd --generate-man DIR` and `--generate-completions DIR`: the manual page
//! domsyncd(8) and the shell completions, made from the clap definition, for packaging
//! (`packaging/build-deb`). Parsed apart from the daemon's options, so that they appear in no
//! help, manual page or completion.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

#[path = "../domsync/generate/assets.rs"]
mod assets;

/// Manual page and shell completions of domsyncd, for packaging.
#[derive(Parser)]
#[command(name = "domsyncd")]
struct GenerateArgs {
    /// Write the manual page domsyncd.8 into DIR.
    #[arg(long, value_name = "DIR")]
    generate_man: Option<PathBuf>,
    /// Write the bash, zsh and fish completions into DIR.
    #[arg(long, value_name = "DIR")]
    generate_completions: Option<PathBuf>,
}

const FILES: &str = "\
Files:
  /etc/domsync/domsync.toml    the configuration (checked with --check)
  /etc/domsync/pki/            CA certificate, this node's certificate and key
  /var/lib/domsync/            the domain stores (state_dir)
  /run/domsync/admin.sock      the local admin socket (domsync status)

Signals: SIGTERM stops gracefully; SIGHUP reloads the configuration and the TLS files (a bad
set is refused and the running one kept). Under systemd: systemctl reload|restart domsyncd.

See also: domsync(1).";

/// When the command line has `--generate-man` or `--generate-completions`: writes them for
/// the command line definition `C` (the `domsyncd` parser) and returns the exit code; `None`
/// otherwise.
pub fn intercept<C: CommandFactory>() -> Option<ExitCode> {
    let asked = std::env::args_os()
        .skip(1)
        .any(|a| a.to_str().is_some_and(|a| a.starts_with("--generate-")));
    if !asked {
        return None;
    }
    let args = GenerateArgs::parse();
    let command = || {
        C::command()
            .about("the domsync service: replicated configuration store of security-appliance management nodes")
            .after_long_help(FILES)
    };
    let write = || -> std::io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        if let Some(dir) = &args.generate_man {
            files.append(&mut assets::man_pages(command(), "8", dir)?);
        }
        if let Some(dir) = &args.generate_completions {
            files.append(&mut assets::completions(C::command(), &[], dir)?);
        }
        Ok(files)
    };
    Some(match write() {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("domsyncd: error: cannot generate: {e}");
            ExitCode::from(1)
        }
    })
}
