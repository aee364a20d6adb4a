//! Manual pages (clap_mangen) and shell completions (clap_complete) of a clap command, shared
//! by `domsync generate` and `domsyncd --generate-man|--generate-completions`.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Writes the page of `cmd` and of every visible subcommand (recursively) into `dir`, in
/// manual section `section`; returns the files written.
pub fn man_pages(cmd: clap::Command, section: &str, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(
        cmd: clap::Command,
        section: &str,
        dir: &Path,
        out: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, section, dir, out)?;
        }
        let version = cmd.get_version().unwrap_or(env!("CARGO_PKG_VERSION"));
        let man = clap_mangen::Man::new(cmd.clone())
            .section(section)
            .source(format!("domsync {version}"))
            .manual("domsync manual");
        out.push(man.generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, section, dir, &mut out)?;
    Ok(out)
}

/// Writes the completion scripts of `cmd` for `shells` (bash, zsh and fish when empty) into
/// `dir`; returns the files written.
pub fn completions(
    mut cmd: clap::Command,
    shells: &[Shell],
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_owned();
    let shells = if shells.is_empty() {
        &[Shell::Bash, Shell::Zsh, Shell::Fish][..]
    } else {
        shells
    };
    shells
        .iter()
        .map(|shell| clap_complete::generate_to(*shell, &mut cmd, &name, dir))
        .collect()
}
